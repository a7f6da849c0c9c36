//! A new policy project (`orchestrator plugin new WORLD NAME`) that builds
//! as it is and passes `orchestrator plugin test` untouched. Entry point:
//! [`new_project`].
//!
//! The project needs nothing but the binary that wrote it: by default the
//! SDK the binary carries is written into `sdk/` (with the WIT it is
//! generated from); `--sdk DIR` or `--sdk git+URL[#REV]` names another.
//!
//! Rust (`--lang rust`): the project stands alone (its own `[workspace]`,
//! nothing inherited): `Cargo.toml` with the SDK as a path (or git)
//! dependency, `Cargo.lock` pinning the SDK's dependencies to the versions
//! this orchestrator was built with, `rust-toolchain.toml` (the toolchain
//! and `wasm32-wasip2` target this orchestrator is built with) and
//! `src/lib.rs` (a working policy of the world, to edit). Python (`--lang
//! python`): `NAME.py` (the policy class) and `requirements.txt`
//! (componentize-py, pinned; the SDK too when it is not the carried one).
//! Both get `cases/` (two fixture cases whose inputs are the documented
//! sample snapshots, the same for both languages) and a README with the
//! commands.

use crate::{AuthoringError, invalid, sdk_copy};
use orchestrator_policy_host::World;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

type Result<T, E = AuthoringError> = std::result::Result<T, E>;

/// The language a project is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with the orchestrator-plugin-sdk crate.
    Rust,
    /// Python, with the orchestrator-policy package (componentize-py).
    Python,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Self::Rust),
            "python" => Ok(Self::Python),
            other => Err(format!("{other:?} is not a language; use rust or python")),
        }
    }
}

/// Where the project gets the SDK from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SdkSource {
    /// The copy this binary carries, written into the project (`sdk/`):
    /// the default, which needs nothing but the binary.
    Carried,
    Path(PathBuf),
    Git {
        url: String,
        rev: Option<String>,
    },
}

impl SdkSource {
    /// `--sdk`: a directory, or `git+URL[#REV]`; without it, the SDK this
    /// binary carries, written into the project's `sdk/` folder.
    fn parse(arg: Option<&str>, lang: Lang) -> Result<Self> {
        let (package, marker) = match lang {
            Lang::Rust => ("orchestrator-plugin-sdk", "Cargo.toml"),
            Lang::Python => ("orchestrator-policy", "pyproject.toml"),
        };
        match arg {
            None => Ok(Self::Carried),
            Some(git) if git.starts_with("git+") => {
                let rest = &git[4..];
                let (url, rev) = match rest.split_once('#') {
                    Some((u, r)) => (u.to_string(), Some(r.to_string())),
                    None => (rest.to_string(), None),
                };
                if url.is_empty() {
                    invalid!(
                        "--sdk {git:?} names no repository; write --sdk git+https://host/owner/repo[#rev]"
                    );
                }
                Ok(Self::Git { url, rev })
            }
            Some(path) => {
                let dir = Path::new(path);
                let manifest = dir.join(marker);
                let Ok(text) = std::fs::read_to_string(&manifest) else {
                    invalid!(
                        "--sdk {path}: no {} there; name the SDK's directory ({} of the orchestrator's repository), or leave --sdk out to use the SDK this binary carries",
                        manifest.display(),
                        sdk_dir_name(lang)
                    );
                };
                if !text.contains(&format!("name = \"{package}\"")) {
                    invalid!(
                        "--sdk {path}: {} is not the {package} package",
                        manifest.display()
                    );
                }
                Ok(Self::Path(
                    std::fs::canonicalize(dir).map_err(AuthoringError::io("resolve", dir))?,
                ))
            }
        }
    }

    /// A requirements.txt line for the Python SDK; none for the carried
    /// copy, which the build imports from `sdk/policy-sdk`.
    fn requirement(&self) -> Option<String> {
        Some(match self {
            Self::Carried => return None,
            Self::Path(dir) => format!("orchestrator-policy @ file://{}", dir.display()),
            Self::Git { url, rev } => format!(
                "orchestrator-policy @ git+{url}{}#subdirectory=python/policy-sdk",
                rev.as_deref().map(|r| format!("@{r}")).unwrap_or_default()
            ),
        })
    }

    fn dependency(&self) -> String {
        match self {
            Self::Carried => format!("{{ path = {} }}", toml_string(CARRIED_RUST_SDK)),
            Self::Path(dir) => format!("{{ path = {} }}", toml_string(&dir.display().to_string())),
            Self::Git { url, rev: None } => format!("{{ git = {} }}", toml_string(url)),
            Self::Git {
                url,
                rev: Some(rev),
            } => {
                format!(
                    "{{ git = {}, rev = {} }}",
                    toml_string(url),
                    toml_string(rev)
                )
            }
        }
    }
}

/// Where the carried Rust SDK is written, relative to the project.
const CARRIED_RUST_SDK: &str = "sdk/crates/plugin-sdk";

/// Where the carried Python SDK is written, relative to the project: the
/// build imports it from there (`PYTHONPATH`).
const CARRIED_PYTHON_SDK: &str = "sdk/policy-sdk";

fn sdk_dir_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "crates/plugin-sdk",
        Lang::Python => "python/policy-sdk",
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A crate name cargo accepts and a wasm file name follows from.
fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        invalid!(
            "{name:?} cannot name a policy crate: use lowercase letters, digits, `-` and `_`, starting with a letter (e.g. gpu-readiness)"
        );
    }
    Ok(())
}

const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// The stub of each world.
fn stub(world: World, lang: Lang) -> &'static str {
    match (lang, world) {
        (Lang::Rust, World::Readiness) => include_str!("../templates/rust/readiness.rs"),
        (Lang::Rust, World::Launch) => include_str!("../templates/rust/launch.rs"),
        (Lang::Rust, World::Health) => include_str!("../templates/rust/health.rs"),
        (Lang::Rust, World::NodeHealth) => include_str!("../templates/rust/node-health.rs"),
        (Lang::Python, World::Readiness) => include_str!("../templates/python/readiness.py"),
        (Lang::Python, World::Launch) => include_str!("../templates/python/launch.py"),
        (Lang::Python, World::Health) => include_str!("../templates/python/health.py"),
        (Lang::Python, World::NodeHealth) => include_str!("../templates/python/node-health.py"),
        (Lang::Rust, World::Scale) => include_str!("../templates/rust/scale.rs"),
        (Lang::Python, World::Scale) => include_str!("../templates/python/scale.py"),
    }
}

/// componentize-py, as the Python SDK pins it.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The two fixture cases of each world: file name, description, input
/// (a documented sample snapshot), expected answer of the stub.
fn cases(world: World) -> Result<Vec<(&'static str, &'static str, Value, Value)>> {
    let sample = |text: &str| -> Result<Value> { Ok(serde_json::from_str(text)?) };
    Ok(match world {
        World::Readiness => vec![
            (
                "all-alive.json",
                "every expected node alive: ready",
                sample(include_str!(
                    "../../../examples/snapshots/readiness-ready.json"
                ))?,
                json!("ready"),
            ),
            (
                "missing-worker.json",
                "a worker has not joined: wait, saying how many are alive",
                sample(include_str!(
                    "../../../examples/snapshots/readiness-missing-worker.json"
                ))?,
                json!({ "wait": "2 of 3 nodes alive" }),
            ),
        ],
        World::Launch => vec![
            (
                "two-gpu-nodes.json",
                "two nodes of 2 GPUs: TP 2 x PP 2",
                sample(include_str!(
                    "../../../examples/snapshots/launch-two-gpu-nodes.json"
                ))?,
                json!({ "plan": {
                    "argv": [
                        "vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct",
                        "--host", "0.0.0.0", "--port", "8000",
                        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "2",
                        "--distributed-executor-backend", "ray"
                    ],
                    "early": false
                }}),
            ),
            (
                "impossible-tp4.json",
                "TP 4 asked for on 1-GPU nodes: refused",
                sample(include_str!(
                    "../../../examples/snapshots/launch-impossible-tp4.json"
                ))?,
                json!({ "error": { "impossible-layout":
                    "tensor-parallel-size 4 needs 4 GPUs on a node; the smallest GPU node has 1" } }),
            ),
        ],
        World::Health => vec![
            (
                "server-exited.json",
                "the serving process exited: restart after the backoff",
                sample(include_str!(
                    "../../../examples/snapshots/health-server-exited.json"
                ))?,
                json!({ "restart": { "reason": "the serving process exited", "backoff-ms": 1000 } }),
            ),
            (
                "healthy.json",
                "serving and probes answer: healthy",
                sample(include_str!(
                    "../../../examples/snapshots/health-healthy.json"
                ))?,
                json!("healthy"),
            ),
        ],
        World::NodeHealth => vec![
            (
                "xid79.json",
                "a GPU fell off the bus: unhealthy",
                sample(include_str!(
                    "../../../examples/snapshots/node-readings-xid79.json"
                ))?,
                json!({ "unhealthy": "GPU 3 XID 79" }),
            ),
            (
                "throttled.json",
                "a throttled GPU without XIDs: healthy for this policy",
                sample(include_str!(
                    "../../../examples/snapshots/node-readings-throttled.json"
                ))?,
                json!("healthy"),
            ),
        ],
        World::Scale => vec![
            (
                "burst.json",
                "20 requests on one replica at 8 a replica: 3 replicas",
                sample(include_str!("../../../examples/snapshots/scale-burst.json"))?,
                json!({ "desired-replicas": 3 }),
            ),
            (
                "quiet.json",
                "1 request on each of 3 replicas: 1 replica",
                sample(include_str!("../../../examples/snapshots/scale-quiet.json"))?,
                json!({ "desired-replicas": 1 }),
            ),
        ],
    })
}

/// Where the built component lands, relative to the project.
fn component_path(lang: Lang, wasm: &str) -> String {
    match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{wasm}"),
        Lang::Python => wasm.to_string(),
    }
}

/// The command that builds the project, run in its folder.
fn build_command(lang: Lang, sdk: &SdkSource, name: &str, wasm: &str) -> String {
    match lang {
        Lang::Rust => "cargo build --target wasm32-wasip2 --release".to_string(),
        Lang::Python => format!(
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && {}.venv/bin/python -m orchestrator_policy.build {}.py -o {wasm}",
            if *sdk == SdkSource::Carried {
                format!("PYTHONPATH={CARRIED_PYTHON_SDK} ")
            } else {
                String::new()
            },
            name.replace('-', "_")
        ),
    }
}

fn readme(world: World, lang: Lang, sdk: &SdkSource, name: &str, wasm: &str) -> String {
    let carried = *sdk == SdkSource::Carried;
    let (build, built) = match lang {
        Lang::Rust => (
            format!(
                "```sh\ncargo build --target wasm32-wasip2 --release\n```\n\n(`rust-toolchain.toml` names the toolchain and the `wasm32-wasip2`\ntarget; rustup installs them on first use.{})",
                if carried {
                    " The SDK and its WIT are in `sdk/`, written by\n`orchestrator plugin new`; `Cargo.lock` pins the versions the orchestrator\nwas built with, so `cargo build --offline` works wherever a cargo cache\nholds them (`cargo fetch` once, with a network).".to_string()
                } else {
                    String::new()
                }
            ),
            component_path(lang, wasm),
        ),
        Lang::Python => (
            format!(
                "```sh\npython3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # once\n{pythonpath}.venv/bin/python -m orchestrator_policy.build {module}.py -o {wasm}\n```\n\n(componentize-py bundles CPython, the SDK and `{module}.py` into one\ncomponent of about 19 MB; the world follows from the class's base.{offline})",
                module = name.replace('-', "_"),
                pythonpath = if carried {
                    format!("PYTHONPATH={CARRIED_PYTHON_SDK} ")
                } else {
                    String::new()
                },
                offline = if carried {
                    " The SDK is in\n`sdk/policy-sdk`, written by `orchestrator plugin new`; without a network,\ninstall componentize-py from a wheelhouse: `pip install --no-index\n--find-links DIR -r requirements.txt`."
                } else {
                    ""
                }
            ),
            component_path(lang, wasm),
        ),
    };
    let version = world.latest();
    format!(
        r#"# {name}

A `{world}` policy for the Ray/vLLM orchestrator (contract
`ray-orchestrator:policy@{version}`), made by `orchestrator plugin new`.
`{source}` is a working policy to change; `cases/` holds its fixture
cases.

## Build

{build} The component is `{built}`.

## Test

```sh
orchestrator plugin test {built} cases
```

runs every case through the orchestrator's real plugin host and prints one
line per case, then `N passed, N failed` (exit 1 on a failure): usable as
a CI step. A case is `{{"description", "input", "params", "expect"}}`;
`input` is the world's input (inline, or a path relative to the case),
`expect` the answer as `orchestrator plugin run` prints it (objects match
on the fields they name).

## Use

```sh
orchestrator plugin check {built}
```

prints its world, version and sha256; pin the digest in the
orchestrator's configuration:

```toml
[policies.{section}]
file = "/etc/orchestrator/policies/{wasm}"
sha256 = "<the digest>"
```
"#,
        section = match world {
            World::NodeHealth => "node-health",
            other => other.name(),
        },
        source = match lang {
            Lang::Rust => "src/lib.rs".to_string(),
            Lang::Python => format!("{}.py", name.replace('-', "_")),
        }
    )
}

fn cargo_manifest(name: &str, sdk: &SdkSource) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
orchestrator-plugin-sdk = {dep}

# A project of its own, even inside another workspace's folder.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
"#,
        dep = sdk.dependency()
    )
}

/// A project written by [`new_project`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Its world.
    pub world: World,
    /// Its name.
    pub name: String,
    /// Where it is.
    pub dir: PathBuf,
    /// The command that builds it, run in `dir`.
    pub build: String,
    /// The component the build writes, relative to `dir`.
    pub component: String,
}

impl std::fmt::Display for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "created the {} policy {} in {}",
            self.world,
            self.name,
            self.dir.display()
        )?;
        writeln!(f, "  build: cd {} && {}", self.dir.display(), self.build)?;
        writeln!(
            f,
            "  test:  orchestrator plugin test {} cases",
            self.component
        )
    }
}

/// Writes the project `name` of `world` into `dir` (default `./NAME`),
/// with the SDK from `sdk` (a directory or `git+URL[#REV]`; default: the
/// checkout this was built from).
pub fn new_project(
    world: &str,
    name: &str,
    dir: Option<&Path>,
    sdk: Option<&str>,
    lang: Lang,
) -> Result<Created> {
    let Some(world) = World::parse(world) else {
        invalid!(
            "{world:?} is not a policy world; use readiness, launch, health, node-health or scale"
        );
    };
    check_name(name)?;
    let sdk = SdkSource::parse(sdk, lang)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map_err(AuthoringError::io("read", &dir))?
            .next()
            .is_some()
    {
        invalid!(
            "{} exists and is not empty; choose another name or --dir",
            dir.display()
        );
    }
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let stub = stub(world, lang).replace("{{name}}", name);
    let mut files: Vec<(PathBuf, String)> = match lang {
        Lang::Rust => vec![
            (PathBuf::from("Cargo.toml"), cargo_manifest(name, &sdk)),
            (PathBuf::from("rust-toolchain.toml"), TOOLCHAIN.to_string()),
            (PathBuf::from(".gitignore"), "/target\n".to_string()),
            (PathBuf::from("src/lib.rs"), stub),
        ],
        Lang::Python => {
            vec![
                (
                    PathBuf::from(format!("{}.py", name.replace('-', "_"))),
                    stub,
                ),
                (
                    PathBuf::from("requirements.txt"),
                    match sdk.requirement() {
                        Some(line) => format!("{COMPONENTIZE_PY}\n{line}\n"),
                        None => format!("{COMPONENTIZE_PY}\n"),
                    },
                ),
                (
                    PathBuf::from(".gitignore"),
                    "/.venv\n*.wasm\n__pycache__/\n".to_string(),
                ),
            ]
        }
    };
    files.push((
        PathBuf::from("README.md"),
        readme(world, lang, &sdk, name, &wasm),
    ));
    if sdk == SdkSource::Carried {
        let carried = match lang {
            Lang::Rust => sdk_copy::rust_files().collect::<Vec<_>>(),
            Lang::Python => sdk_copy::python_files().collect(),
        };
        for (path, text) in carried {
            files.push((Path::new("sdk").join(path), text.to_string()));
        }
        if lang == Lang::Rust {
            files.push((PathBuf::from("Cargo.lock"), sdk_copy::cargo_lock(name)));
        }
    }
    for (file, description, input, expect) in cases(world)? {
        let case = json!({
            "description": description,
            "input": input,
            "params": {},
            "expect": expect,
        });
        files.push((
            Path::new("cases").join(file),
            format!("{}\n", serde_json::to_string_pretty(&case)?),
        ));
    }
    for (path, text) in &files {
        let at = dir.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(AuthoringError::io("create", parent))?;
        }
        std::fs::write(&at, text).map_err(AuthoringError::io("write", &at))?;
    }
    let build = build_command(lang, &sdk, name, &wasm);
    Ok(Created {
        world,
        name: name.to_string(),
        dir,
        build,
        component: component_path(lang, &wasm),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sdk_sources_are_checked() {
        assert!(check_name("gpu-readiness").is_ok());
        assert!(check_name("Gpu").is_err());
        assert!(check_name("1x").is_err());
        assert!(check_name("a b").is_err());
        assert_eq!(
            SdkSource::parse(Some("git+https://example.com/o/r#abc"), Lang::Rust).ok(),
            Some(SdkSource::Git {
                url: "https://example.com/o/r".into(),
                rev: Some("abc".into())
            })
        );
        assert!(SdkSource::parse(Some("git+"), Lang::Rust).is_err());
        assert!(
            SdkSource::parse(Some("/nonexistent"), Lang::Python)
                .is_err_and(|e| e.to_string().contains("no /nonexistent/pyproject.toml"))
        );
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
    }
}
