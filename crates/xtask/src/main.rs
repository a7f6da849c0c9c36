//! `cargo xtask`: the project's task runner.
//!
//! - `cargo xtask test`: every check (what `.ci/run` runs): installs the
//!   wasm32-wasip2 target, `cargo fmt --check`, clippy with `-D warnings`,
//!   and the whole test suite.
//! - `cargo xtask demo`: the whole job on this machine.
//! - `cargo xtask bench NAME`: one benchmark; its last line is
//!   `BENCH NAME key=value ...`.
//! - `cargo xtask wit-digests`: the digest of every `wit/` package folder,
//!   for `wit/RELEASED` when a version is released.
//!
//! Every cargo invocation selects the same packages with the same flags
//! ([`workspace`]). The demo builds only the libraries and binaries
//! ([`build_binaries`]); the tests add the test targets ([`build_tests`]);
//! a benchmark adds the examples ([`build_all`]). Features unify the same
//! way in all three (checked by [`check_one_build`]), so whichever runs
//! second compiles nothing the first one built. `cargo xtask test` runs its
//! steps in four lanes side by side ([`lanes`]). What the
//! end-to-end parts need (venvs, the model, Debian's servers) is made on a
//! second thread while cargo compiles ([`Preparing`]).

mod features_bench;
mod lanes;
mod soak;

use anyhow::{Context, Result, bail};
use orchestrator_test_support as test_support;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// `cargo SUB --workspace --exclude <every guest> --release --locked`:
/// the one selection every build, test and run uses. Guest crates are
/// components for wasm32-wasip2, built by build scripts; clippy checks
/// them natively, but they are never linked natively (their export names
/// are not valid native symbols).
fn workspace(sub: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([sub, "--workspace", "--release", "--locked"]);
    for guest in orchestrator_guest_build::all_guests() {
        cmd.args(["--exclude", guest]);
    }
    cmd
}

/// Builds what the tests run: every host library, binary and test target
/// (not the examples, which are benchmark programs: clippy checks them,
/// `cargo xtask bench` builds them).
fn build_tests() -> Result<()> {
    step("build the libraries, binaries and tests (release)");
    run(workspace("build").args(TEST_TARGETS))
}

/// The targets the tests need: `--lib --bins --tests`.
const TEST_TARGETS: [&str; 3] = ["--lib", "--bins", "--tests"];

/// The unit-test commands of `--quick`: every test target's non-ignored
/// tests, then the doc tests.
fn unit_test_commands() -> Vec<Command> {
    let mut units = workspace("test");
    units.args(TEST_TARGETS).current_dir(root());
    vec![units, doc_test_command()]
}

/// `cargo test --doc`: the examples in the docs compile and run.
fn doc_test_command() -> Command {
    let mut docs = workspace("test");
    docs.arg("--doc").current_dir(root());
    docs
}

/// Builds every host target (binary, libraries, tests, examples) once.
fn build_all() -> Result<()> {
    step("build everything (release): the binary, the tests, the benchmarks");
    run(workspace("build").arg("--all-targets"))
}

/// Builds what the demo runs: every host library and binary (the
/// `orchestrator` binary; the example policy, made by test-plugins' build
/// script), no test or benchmark target.
fn build_binaries() -> Result<()> {
    step("build the libraries and binaries (release): what the demo runs");
    run(workspace("build").args(["--lib", "--bins"]))
}

/// Fails when building only the libraries and binaries would compile
/// anything [`build_tests`] did not (a dependency whose features differ
/// between the two, e.g. through a dev-dependency): then the demo and the
/// tests would each compile their own copy. Run after [`build_tests`]; it
/// compiles nothing when all is well.
fn check_one_build() -> Result<()> {
    step("check: building the binaries alone reuses every unit of the full build");
    let output = workspace("build")
        .args(["--lib", "--bins", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !output.status.success() {
        bail!("cargo build --lib --bins failed");
    }
    let rebuilt: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"fresh\":false"))
        .filter_map(|l| {
            let id = l.split("\"package_id\":\"").nth(1)?;
            Some(id.split('"').next()?.to_string())
        })
        .collect();
    if !rebuilt.is_empty() {
        bail!(
            "building only the libraries and binaries compiled these again, with other features than the full build: {}; \
             give the crate that pulls them in (`cargo tree -e features -i NAME`) the features the dev-dependencies ask for",
            rebuilt.join(", ")
        );
    }
    Ok(())
}

/// Work done on a second thread while cargo compiles on this one (pip
/// downloads, apt installs): on a fresh machine the two overlap.
struct Preparing<T>(std::thread::JoinHandle<Result<T>>);

impl<T: Send + 'static> Preparing<T> {
    fn start(work: impl FnOnce() -> Result<T> + Send + 'static) -> Self {
        Self(std::thread::spawn(work))
    }

    /// Its result, once it is done.
    fn wait(self) -> Result<T> {
        self.0
            .join()
            .map_err(|_| anyhow::anyhow!("the preparation thread panicked"))?
    }
}

/// What the integration tests need, made (or found cached) once.
struct TestNeeds {
    ray: PathBuf,
    policy_python: PathBuf,
    registry: PathBuf,
    venv: PathBuf,
    model: PathBuf,
    redis: PathBuf,
    nginx: PathBuf,
}

impl TestNeeds {
    fn prepare() -> Result<Self> {
        let ray = ray_venv()?;
        let policy_python = policy_venv()?;
        let registry = registry_server()?;
        let venv = vllm_venv()?;
        let model = tiny_model(&venv)?;
        let redis = redis_server()?;
        let nginx = nginx_server()?;
        Ok(Self {
            ray,
            policy_python,
            registry,
            venv,
            model,
            redis,
            nginx,
        })
    }
}

/// A benchmark program built by [`build_all`].
fn example(name: &str) -> PathBuf {
    root().join("target/release/examples").join(name)
}

const BENCHES: &[(&str, &str)] = &[
    (
        "plugins",
        "cold compile, cache load, instantiate and readiness calls at 3/1,000/10,000 nodes",
    ),
    (
        "serve",
        "last registration to first completion, orchestrator vs the origin flow (loop + vllm serve), and death-to-action, with real vLLM",
    ),
    (
        "native",
        "the native backend (no Ray) with real vLLM: the last rank's start to the first completion, a rank's death to serving again, a lost pod to serving again",
    ),
    (
        "scale",
        "from zero workers to ready under Ray's real autoscaler (asking vs only waiting), and a recorded vLLM burst to the scale policy's recommendation (with and without its window)",
    ),
    (
        "scale-wait",
        "the wait phase at 1,000 and 10,000 nodes against a stand-in GCS speaking Ray's gRPC: last registration to ready, CPU, peak RSS, policy calls",
    ),
    (
        "health",
        "a GPU fault on a worker (NVML stand-in) to the head's view, and the probes' CPU, with node health on and off, on a real local cluster",
    ),
    (
        "prefetch",
        "a multi-GB synthetic weights file read cold, prefetched, and read warm (page cache evicted with posix_fadvise)",
    ),
    (
        "authoring",
        "the example readiness policy in Python (componentize-py) against Rust: size, cold compile, cache load, calls at 3 and 1,000 nodes",
    ),
    (
        "coldstart",
        "three nodes fetching a 1.1 GB model from an nginx origin held to 50 MB/s: once per group through the peers against every node on its own, and the first completion after the start",
    ),
    (
        "startup",
        "startup faults with real vLLM, native and Ray: a rank SIGSTOPped at a random stage (stall named with its stacks), a start that raises (the crash loop stopped), a rank's preflight traffic dropped in a namespace of its own, the first request after /readyz",
    ),
    (
        "wait",
        "join detection: orchestrator wait vs the corrected `ray status` loop on a real local cluster, and their CPU while waiting",
    ),
    (
        "features",
        "compile time of wasmtime, tonic and kube with their default features against the features this workspace asks (scratch crates, empty target folders)",
    ),
];

/// Prints `<sha256> <folder>` for every package folder under `wit/`.
fn wit_digests() -> Result<()> {
    let wit = root().join("wit");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&wit)
        .with_context(|| format!("cannot read {}", wit.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for folder in folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("{} {name}", orchestrator_guest_build::wit_digest(&folder)?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") if args.get(1).is_some_and(|a| a == "--quick") => test_quick(),
        Some("test") => test(),
        Some("demo") => demo(),
        Some("prepare") => prepare(),
        Some("wit-digests") => wit_digests(),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench NAME|soak [--minutes N]|prepare|wit-digests>\n  test         every check (fmt, clippy, tests); --quick: format, lints, unit and plugin tests (no real Ray or vLLM)\n  demo         the whole job on this machine\n  bench        one of: {}\n  soak         a chaos run: head + 2 workers serving real vLLM, a random fault every 20-60 s, invariants checked (default 5 minutes)\n  prepare      create the cached Ray and vLLM venvs and the tiny model\n  wit-digests  the digest of every wit/ package (for wit/RELEASED)",
                BENCHES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask soak [--minutes N]`.
fn soak(args: &[String]) -> Result<()> {
    let minutes = match args {
        [] => 5.0,
        [flag, n] if flag == "--minutes" => n
            .parse::<f64>()
            .ok()
            .filter(|m| *m >= 1.0)
            .with_context(|| format!("--minutes {n:?}: give a number of minutes, at least 1"))?,
        other => bail!("usage: cargo xtask soak [--minutes N], not {other:?}"),
    };
    let bin = orchestrator_binary()?;
    let venv = vllm_venv()?;
    let model = tiny_model(&venv)?;
    let redis = redis_server()?;
    step(&format!("soak for {minutes} minutes"));
    soak::soak(&bin, &venv, &model, &redis, minutes, &root().join("target"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn step(title: &str) {
    eprintln!("\n==> {title}");
}

/// Runs `cmd` with its output (pip's hundreds of lines) in
/// `target/xtask-logs/<name>.log`; the terminal shows the script's own
/// `== ` progress lines as they come, the time, and on a failure the
/// log's last lines.
fn run_logged(cmd: &mut Command, name: &str) -> Result<()> {
    use std::io::Read;
    let dir = root().join("target/xtask-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&path)?;
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .current_dir(root())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    eprintln!("    output in {}", path.display());
    let mut reader = std::fs::File::open(&path)?;
    let mut pending = String::new();
    let mut show_progress = |reader: &mut std::fs::File| -> Result<()> {
        let mut chunk = String::new();
        reader.read_to_string(&mut chunk)?;
        pending.push_str(&chunk);
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(progress) = line.trim_end().strip_prefix("== ") {
                eprintln!("    {progress} ({:.0} s)", start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        show_progress(&mut reader)?;
        std::thread::sleep(Duration::from_millis(500));
    };
    show_progress(&mut reader)?;
    if !status.success() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        bail!(
            "{shown} failed ({status}); its whole output: {}",
            path.display()
        );
    }
    eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Cargo, without the variables `cargo run` set for xtask itself: build
/// scripts that watch them (ring's watches `CARGO_PKG_NAME` and
/// `CARGO_MANIFEST_DIR`) would otherwise rebuild on every switch between
/// `cargo xtask ...` and a plain `cargo build`.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let set_by_cargo_run = key.to_str().is_some_and(|k| {
            [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| k.starts_with(prefix))
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "OUT_DIR"
        });
        if set_by_cargo_run {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Installs what the build needs that cargo does not fetch by itself.
fn ensure_toolchain() -> Result<()> {
    step("toolchain: wasm32-wasip2 target, rustfmt, clippy");
    let has_rustup = Command::new("rustup").arg("--version").output().is_ok();
    if has_rustup {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    } else {
        eprintln!(
            "    rustup not found: assuming the wasm32-wasip2 target, rustfmt and clippy are installed"
        );
    }
    Ok(())
}

/// The web server the weights tests serve origins with:
/// `$ORCHESTRATOR_NGINX_BIN`, `nginx` on the PATH, or Debian's `nginx`.
fn nginx_server() -> Result<PathBuf> {
    debian_program(
        "ORCHESTRATOR_NGINX_BIN",
        "nginx",
        "nginx",
        "Debian's nginx, the origin of the weights tests",
    )
}

/// The CNCF distribution registry that the OCI tests start on loopback:
/// `$ORCHESTRATOR_REGISTRY_BIN`, `docker-registry` on the PATH, or Debian's
/// `docker-registry` package installed with apt on first use.
fn registry_server() -> Result<PathBuf> {
    debian_program(
        "ORCHESTRATOR_REGISTRY_BIN",
        "docker-registry",
        "docker-registry",
        "Debian's CNCF distribution registry, for the OCI tests",
    )
}

/// The Redis server that the GCS fault-tolerance test starts on loopback:
/// `$ORCHESTRATOR_REDIS_BIN`, `redis-server` on the PATH, or Debian's
/// `redis-server` package installed with apt on first use.
fn redis_server() -> Result<PathBuf> {
    debian_program(
        "ORCHESTRATOR_REDIS_BIN",
        "redis-server",
        "redis-server",
        "the Redis that Ray's GCS fault tolerance keeps its tables in",
    )
}

/// A program from `$variable`, the PATH, or Debian's `package` (installed
/// with apt, through sudo unless root, on first use).
fn debian_program(variable: &str, program: &str, package: &str, why: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(variable) {
        return Ok(PathBuf::from(bin));
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|bin| bin.is_file())
        })
    };
    if let Some(bin) = on_path() {
        return Ok(bin);
    }
    step(&format!("apt-get install {package} ({why})"));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    if run(&mut apt(&install)).is_err() {
        run(&mut apt(&["update"]))?;
        run(&mut apt(&install))?;
    }
    on_path()
        .or_else(|| {
            ["/usr/bin", "/usr/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(program))
                .find(|bin| bin.is_file())
        })
        .with_context(|| {
            format!("{program} is not on the PATH after installing it: set {variable}")
        })
}

/// The Python venv with the pinned Ray (python/requirements-ray.txt),
/// created on first use under `~/.cache/ray-orchestrator/` and keyed by the
/// sha256 of the requirements and the Python version, so later runs and CI
/// on the same machine reuse it. Returns the venv's `ray` executable.
fn ray_venv() -> Result<PathBuf> {
    let requirements = root().join("python/requirements-ray.txt");
    let python = std::env::var("ORCHESTRATOR_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .with_context(|| {
            format!("cannot run {python}: install Python 3.9-3.12 (or set ORCHESTRATOR_PYTHON)")
        })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let key = digest_of(&["python/requirements-ray.txt"], &version)?;
    let venv = cache_root()?.join(format!("venv-ray-{key}"));
    let ray = venv.join("bin/ray");
    if venv.join(".complete").is_file() && ray.is_file() {
        eprintln!("    Ray venv: {} (cached)", venv.display());
        return Ok(ray);
    }
    step(&format!(
        "create the Ray venv ({version}, python/requirements-ray.txt) in {}",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove the partial venv {}", venv.display()))?;
    }
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    run_logged(pip_install(&venv).arg("-r").arg(&requirements), "venv-ray")?;
    std::fs::write(venv.join(".complete"), &version)?;
    Ok(ray)
}

/// The files of the Python policy SDK, which the policy venv installs.
const POLICY_SDK_FILES: &[&str] = &[
    "python/requirements-policy.txt",
    "python/policy-sdk/pyproject.toml",
    "python/policy-sdk/orchestrator_policy/__init__.py",
    "python/policy-sdk/orchestrator_policy/_common.py",
    "python/policy-sdk/orchestrator_policy/build.py",
    "python/policy-sdk/orchestrator_policy/readiness.py",
    "python/policy-sdk/orchestrator_policy/launch.py",
    "python/policy-sdk/orchestrator_policy/health.py",
    "python/policy-sdk/orchestrator_policy/node_health.py",
    "python/policy-sdk/orchestrator_policy/scale.py",
    "wit/policy-0.2.0",
    "wit/policy-0.3.0",
];

/// A venv with componentize-py (pinned) and the Python policy SDK
/// (`python/policy-sdk`) installed, as a Python policy author has it;
/// cached like the others. Returns its python.
fn policy_venv() -> Result<PathBuf> {
    let python = std::env::var("ORCHESTRATOR_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run {python}: install Python 3.10 or later (or set ORCHESTRATOR_PYTHON)"
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let key = digest_of(POLICY_SDK_FILES, &version)?;
    let venv = cache_root()?.join(format!("venv-policy-{key}"));
    let bin = venv.join("bin/python");
    if venv.join(".complete").is_file() && bin.is_file() {
        eprintln!("    policy venv: {} (cached)", venv.display());
        return Ok(bin);
    }
    step(&format!(
        "create the Python policy venv ({version}: componentize-py, python/policy-sdk) in {}",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove the partial venv {}", venv.display()))?;
    }
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    let pip =
        |args: &[&str], log: &str| -> Result<()> { run_logged(pip_install(&venv).args(args), log) };
    pip(&["-r", "python/requirements-policy.txt"], "venv-policy")?;
    // A copy, not an editable install: the venv outlives this checkout.
    pip(&["./python/policy-sdk"], "venv-policy-sdk")?;
    for leftover in [
        "python/policy-sdk/build",
        "python/policy-sdk/orchestrator_policy.egg-info",
    ] {
        let _ = std::fs::remove_dir_all(root().join(leftover));
    }
    std::fs::write(venv.join(".complete"), &version)?;
    Ok(bin)
}

fn cache_root() -> Result<PathBuf> {
    Ok(std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?
        .join("ray-orchestrator"))
}

/// sha256 (first 8 bytes, hex) of files under the repository plus extra text.
fn digest_of(files: &[&str], extra: &str) -> Result<String> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for f in files {
        let path = root().join(f);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = walk(&path);
            entries.sort();
            for e in entries {
                hash.update(
                    e.strip_prefix(root())
                        .unwrap_or(&e)
                        .to_string_lossy()
                        .as_bytes(),
                );
                hash.update(std::fs::read(&e)?);
            }
        } else {
            hash.update(
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
    }
    hash.update(extra.as_bytes());
    Ok(hex::encode(&hash.finalize()[..8]))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "__pycache__" || name.ends_with(".egg-info") || name == "build" {
                continue;
            }
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Real vLLM (the CPU build, installed with the two workarounds), the
/// pinned Ray and the test-only platform plugin, in a venv cached under
/// `~/.cache/ray-orchestrator/` and keyed by the install script's inputs.
/// A first build downloads a few GB and takes minutes. Returns the venv.
fn vllm_venv() -> Result<PathBuf> {
    let python = std::env::var("ORCHESTRATOR_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let key = digest_of(
        &[
            "python/install_vllm_venv.sh",
            "python/requirements-ray.txt",
            "python/requirements-uv.txt",
            "python/vllm_cpu_ray_test_platform",
        ],
        &version,
    )?;
    let venv = cache_root()?.join(format!("venv-vllm-{key}"));
    if venv.join(".complete").is_file() {
        eprintln!("    vLLM venv: {} (cached)", venv.display());
        stacks_tool(&venv)?;
        return Ok(venv);
    }
    step(&format!(
        "create the vLLM venv in {} (first time only: downloads a few GB, takes minutes)",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    run_logged(
        Command::new("bash")
            .arg(root().join("python/install_vllm_venv.sh"))
            .arg(&venv),
        "venv-vllm",
    )?;
    std::fs::write(venv.join(".complete"), &version)?;
    stacks_tool(&venv)?;
    Ok(venv)
}

/// `pip install` of `venv`, quiet about its own version and progress.
fn pip_install(venv: &Path) -> Command {
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]);
    pip
}

/// py-spy (python/requirements-stacks.txt) beside vLLM in its venv, where
/// the orchestrator looks for it to take a stalled rank's stacks;
/// installed once per version of that file.
fn stacks_tool(venv: &Path) -> Result<()> {
    let key = digest_of(&["python/requirements-stacks.txt"], "")?;
    let marker = venv.join(format!(".stacks-{key}"));
    if marker.is_file() && venv.join("bin/py-spy").is_file() {
        return Ok(());
    }
    step("install py-spy beside vLLM (python/requirements-stacks.txt)");
    run_logged(
        pip_install(venv)
            .arg("-r")
            .arg(root().join("python/requirements-stacks.txt")),
        "py-spy",
    )?;
    std::fs::write(marker, "")?;
    Ok(())
}

/// The tiny random-weight model the tests serve (made offline by
/// `python/make_tiny_model.py`, cached by the script's and the venv's
/// digest).
fn tiny_model(venv: &Path) -> Result<PathBuf> {
    made_model(
        venv,
        "tiny-model",
        "the tiny model (offline, a few seconds)",
        &[],
    )
}

/// The 1.1 GB random-weight model of `bench coldstart` (the same script
/// with `--large`, cached like the tiny one).
fn large_model(venv: &Path) -> Result<PathBuf> {
    made_model(
        venv,
        "large-model",
        "the 1.1 GB random-weight model (offline, about a minute)",
        &["--large"],
    )
}

/// `python/make_tiny_model.py DIR ARGS` run once into
/// `<cache>/<name>-<digest>`.
fn made_model(venv: &Path, name: &str, what: &str, args: &[&str]) -> Result<PathBuf> {
    let key = digest_of(&["python/make_tiny_model.py"], &venv.display().to_string())?;
    let dir = cache_root()?.join(format!("{name}-{key}"));
    if dir.join(".complete").is_file() {
        eprintln!("    {name}: {} (cached)", dir.display());
        return Ok(dir);
    }
    step(&format!("make {what} in {}", dir.display()));
    run(Command::new(venv.join("bin/python"))
        .arg(root().join("python/make_tiny_model.py"))
        .arg(&dir)
        .args(args)
        .env("HF_HUB_OFFLINE", "1"))?;
    std::fs::write(dir.join(".complete"), "")?;
    Ok(dir)
}

/// An integration test target, what it checks, and the environment it is
/// given.
/// A test step: its name, the test target it runs, libtest's filter
/// arguments (names to run, or `--skip NAME`), what it checks, and the
/// environment it is given.
type TestStep = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    Vec<(&'static str, PathBuf)>,
);

/// The tests of native_e2e and vllm_e2e that run real vLLM (the heavy
/// lane); their other tests use a stand-in and run in the waiting lane.
const NATIVE_WITH_VLLM: &[&str] = &[
    "a_late_worker_joins_a_dead_rank",
    "a_rank_that_fails_to_start",
];
const NATIVE_WITHOUT_VLLM: &[&str] = &[
    "--skip",
    "a_late_worker_joins_a_dead_rank",
    "--skip",
    "a_rank_that_fails_to_start",
];
const RAY_PREFLIGHT: &[&str] = &["a_ray_cluster_runs_its_gang_preflight"];
const VLLM_OVER_RAY: &[&str] = &["--skip", "a_ray_cluster_runs_its_gang_preflight"];
/// weights_e2e's test over Ray (as sensitive to the CPU left as
/// vllm_e2e's) and its native group's.
const WEIGHTS_OVER_RAY: &[&str] = &["a_ray_cluster_fetches_the_model_once"];
const WEIGHTS_NATIVE: &[&str] = &["--skip", "a_ray_cluster_fetches_the_model_once"];

/// The inner loop: format, lints, and the unit, plugin and CLI tests
/// (no real Ray, vLLM, registry, Redis or nginx).
fn test_quick() -> Result<()> {
    let start = Instant::now();
    ensure_toolchain()?;
    step("cargo fmt --check");
    run(&mut format_check())?;
    step("cargo clippy -D warnings (host and guest crates)");
    run(&mut clippy())?;
    step("cargo test (unit, plugin host with real components, CLI; doc tests)");
    for mut command in unit_test_commands() {
        run(&mut command)?;
    }
    eprintln!(
        "\nquick checks passed in {:.0} s (`cargo xtask test` runs everything)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo fmt --check`.
fn format_check() -> Command {
    let mut cmd = cargo();
    cmd.args(["fmt", "--all", "--check"]).current_dir(root());
    cmd
}

/// Clippy with `-D warnings` over every target of every crate, guests
/// included (checked natively).
fn clippy() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])
    .current_dir(root());
    cmd
}

fn test() -> Result<()> {
    let start = Instant::now();
    let mut times: Vec<(String, f64)> = Vec::new();
    let timed = |times: &mut Vec<(String, f64)>, name: &str, began: Instant| {
        times.push((name.to_string(), began.elapsed().as_secs_f64()));
    };
    let began = Instant::now();
    ensure_toolchain()?;
    timed(&mut times, "toolchain", began);
    let needs = Preparing::start(TestNeeds::prepare);
    let began = Instant::now();
    step("cargo fmt --check");
    run(&mut format_check())?;
    timed(&mut times, "cargo fmt --check", began);
    let began = Instant::now();
    step("build what the heavy lane runs first (release): the binaries and the real-vLLM tests");
    run(workspace("build")
        .arg("--bins")
        .args(HEAVY_TARGETS.iter().flat_map(|t| ["--test", *t])))?;
    let binaries = test_binaries(
        &HEAVY_TARGETS
            .iter()
            .flat_map(|t| ["--test", *t])
            .collect::<Vec<_>>(),
    )?;
    timed(
        &mut times,
        "build the binaries and the heavy lane's tests (crates fetched)",
        began,
    );
    let began = Instant::now();
    let needs = needs.wait()?;
    timed(
        &mut times,
        "venvs, model, servers (what was left after the build)",
        began,
    );
    let lanes = test_steps(&needs, &binaries)?;
    eprintln!(
        "\n==> the test steps, in four lanes side by side (output in target/xtask-logs/test-*.log): the heavy lane starts now, the light lane builds the rest first, the waiting and lint lanes start after that build"
    );
    times.extend(lanes::run_lanes(lanes, &root().join("target/xtask-logs"))?);
    eprintln!(
        "\nall checks passed in {:.0} s; the steps, slowest first:\n{}",
        start.elapsed().as_secs_f64(),
        lanes::slowest_first(&times)
    );
    Ok(())
}

/// The integration test targets of the heavy lane (real vLLM), built
/// first so that it starts while the light lane builds the rest.
const HEAVY_TARGETS: [&str; 3] = ["weights_e2e", "vllm_e2e", "native_e2e"];

/// The integration test binaries that `targets` (cargo's target flags)
/// select, already built (this builds nothing more).
fn test_binaries(targets: &[&str]) -> Result<Vec<lanes::TestBinary>> {
    let output = workspace("test")
        .args(targets)
        .args(["--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test --no-run failed");
    }
    Ok(lanes::TestBinary::from_cargo_messages(
        &String::from_utf8_lossy(&output.stdout),
    ))
}

/// The test steps in four lanes: heavy (real vLLM, from the binaries
/// built first), light (the rest of the build, the unit tests, then real
/// Ray), waiting (once the light lane's build is done: Python policies,
/// the tests that only wait for timeouts, registry, servers, stand-ins,
/// the head restart) and lint (clippy and the doc tests, after the
/// build), each integration target with what it checks and what it is
/// given.
fn test_steps(
    needs: &TestNeeds,
    binaries: &[lanes::TestBinary],
) -> Result<Vec<(&'static str, Vec<lanes::Step>)>> {
    // Ray starts its workers (vLLM's ranks over Ray, Ray tasks) at nice 15
    // by default, below the compiling beside them (nice 10): vLLM over Ray
    // took 84 s instead of 51 beside two nice-10 busy loops, 51 with this
    // (measured). With it, they keep their step's share.
    let ray_workers = ("RAY_worker_niceness", PathBuf::from("0"));
    let ray_env = [
        ("ORCHESTRATOR_RAY_BIN", needs.ray.clone()),
        ray_workers.clone(),
    ];
    let vllm_env = [
        ("ORCHESTRATOR_RAY_BIN", needs.venv.join("bin/ray")),
        ("ORCHESTRATOR_VLLM_BIN", needs.venv.join("bin/vllm")),
        ("ORCHESTRATOR_TINY_MODEL", needs.model.clone()),
        ray_workers,
    ];
    let py_spy = ("ORCHESTRATOR_PY_SPY_BIN", needs.venv.join("bin/py-spy"));
    let nginx = ("ORCHESTRATOR_NGINX_BIN", needs.nginx.clone());
    let token: PathBuf = "gcs-fault-tolerance-test-token-0123".into();
    // Real vLLM over real Ray first, beside the rest of the build (at the
    // leftover share); the native ones, which slowed least beside other
    // tests (1.05-1.2 times as long as alone, measured), come after.
    let heavy: Vec<TestStep> = vec![
        (
            "vllm_e2e",
            "vllm_e2e",
            VLLM_OVER_RAY,
            "real vLLM over real Ray",
            vllm_env.to_vec(),
        ),
        (
            "weights_e2e-ray",
            "weights_e2e",
            WEIGHTS_OVER_RAY,
            "a Ray cluster fetching the model once from nginx, each node serving its own copy with real vLLM",
            [vllm_env.to_vec(), vec![nginx.clone()]].concat(),
        ),
        (
            "weights_e2e-native",
            "weights_e2e",
            WEIGHTS_NATIVE,
            "a native group fetching the model once, each rank serving its own copy with real vLLM; the compile cache kept and shared",
            [vllm_env.to_vec(), vec![nginx.clone()]].concat(),
        ),
        (
            "native_e2e-vllm",
            "native_e2e",
            NATIVE_WITH_VLLM,
            "the native backend with real vLLM, no Ray",
            [vllm_env.to_vec(), vec![py_spy.clone()]].concat(),
        ),
    ];
    // Real Ray: each file has its own addresses, but weights_group shares
    // ray_cli's and kube_e2e's, so they run one after the other here.
    let light: Vec<TestStep> = vec![
        (
            "ray_cli",
            "ray_cli",
            &[],
            "run, local and wait against real Ray",
            ray_env.to_vec(),
        ),
        (
            "kube_e2e",
            "kube_e2e",
            &[],
            "Kubernetes awareness (fake API server, real Ray)",
            ray_env.to_vec(),
        ),
        (
            "weights_group",
            "weights_group",
            &[],
            "weights fetched once per group from a real nginx origin: corrupt chunk, peer killed, origin gone, revision change",
            vec![nginx.clone()],
        ),
        (
            "ray_auth",
            "ray_auth",
            &[],
            "Ray's token authentication",
            ray_env.to_vec(),
        ),
        (
            "ray_autoscaler",
            "ray_autoscaler",
            &[],
            "Ray's real autoscaler",
            ray_env.to_vec(),
        ),
    ];
    let waiting: Vec<TestStep> = vec![
        (
            "python_policy",
            "python_policy",
            &[],
            "policies in Python (componentize-py) through the real host",
            vec![("ORCHESTRATOR_POLICY_PYTHON", needs.policy_python.clone())],
        ),
        (
            "endpoints_load",
            "endpoints_load",
            &[],
            "the endpoints under hostile load: idle and slow connections, a huge header",
            Vec::new(),
        ),
        (
            "hostile_gcs",
            "hostile_gcs",
            &[],
            "the GCS client against hostile replies: silence, garbage, huge frames",
            Vec::new(),
        ),
        (
            "ray_wait",
            "ray_wait",
            &[],
            "the wait against real Ray 2.60",
            ray_env.to_vec(),
        ),
        (
            "node_health",
            "node_health",
            &[],
            "node health with the NVML stand-in, real Ray",
            ray_env.to_vec(),
        ),
        (
            "early_launch",
            "early_launch",
            &[],
            "early launch and the local copy, real Ray",
            ray_env.to_vec(),
        ),
        (
            "vllm_e2e-preflight",
            "vllm_e2e",
            RAY_PREFLIGHT,
            "a Ray cluster's gang preflight (real Ray, vLLM's torch)",
            vllm_env.to_vec(),
        ),
        (
            "oci_registry",
            "oci_registry",
            &[],
            "policies through a real OCI registry (the CNCF distribution registry)",
            vec![("ORCHESTRATOR_REGISTRY_BIN", needs.registry.clone())],
        ),
        (
            "serve",
            "serve",
            &[],
            "the serve phase with a stand-in server; a stall's stacks through the real py-spy",
            vec![py_spy.clone()],
        ),
        (
            "native_e2e",
            "native_e2e",
            NATIVE_WITHOUT_VLLM,
            "the native backend with a stand-in vLLM: rank checks, Kubernetes, node health, drains, a new leader, a stopped rank's stacks through the real py-spy, the gang preflight",
            [vllm_env.to_vec(), vec![py_spy]].concat(),
        ),
        (
            "gcs_fault_tolerance",
            "gcs_fault_tolerance",
            &[],
            "a head restart with GCS fault tolerance, under Ray's token authentication: real Redis, Ray and vLLM",
            // Every process of the test (Ray nodes, orchestrators, vLLM)
            // inherits these: the whole restart runs with token auth on.
            [
                vllm_env.to_vec(),
                vec![
                    ("ORCHESTRATOR_REDIS_BIN", needs.redis.clone()),
                    ("RAY_AUTH_MODE", "token".into()),
                    ("RAY_AUTH_TOKEN", token),
                ],
            ]
            .concat(),
        ),
    ];
    // The unit step runs every other test binary: each integration target
    // above is run whole by its steps (its filters split it, all of it).
    let run_whole: Vec<&'static str> = [&heavy, &light, &waiting]
        .into_iter()
        .flatten()
        .map(|step| step.1)
        .collect();
    let heavy = steps_of(binaries, heavy)?;
    let built = std::sync::Arc::new(lanes::Built::default());
    let handed = std::sync::Arc::clone(&built);
    // The rest of the build first (at the leftover share: it has no
    // deadline, the tests beside it do); the other lanes wait for it.
    let light = vec![
        lanes::Step {
            name: "build the rest",
            what: "the libraries, binaries and every test target; then the one-build check",
            work: lanes::Work::Task(Box::new(move || {
                let built = build_tests()
                    .and_then(|()| check_one_build())
                    .and_then(|()| test_binaries(&["--tests"]));
                match built {
                    Ok(binaries) => {
                        handed.set(Some(binaries));
                        Ok(())
                    }
                    Err(e) => {
                        handed.set(None);
                        Err(e)
                    }
                }
            })),
            share: lanes::Share::Leftover,
        },
        units_later(&built, run_whole),
        later(&built, light),
    ];
    let waiting = vec![later(&built, waiting)];
    // Clippy and the doc tests take cargo's lock on the target folder, so
    // they follow each other (the tests, binaries run directly, take no
    // lock).
    let lint = vec![lanes::Step {
        name: "clippy (after the build)",
        what: "waits for the light lane's build",
        work: lanes::Work::Later(Box::new({
            let built = std::sync::Arc::clone(&built);
            move || {
                built.wait()?;
                Ok(vec![
                    lanes::Step {
                        name: "clippy",
                        what: "clippy -D warnings on every crate (guests included)",
                        work: lanes::Work::Commands(vec![clippy()]),
                        share: lanes::Share::Leftover,
                    },
                    lanes::Step {
                        name: "doc tests",
                        what: "the examples in the docs compile and run",
                        work: lanes::Work::Commands(vec![doc_test_command()]),
                        share: lanes::Share::Leftover,
                    },
                ])
            }
        })),
        share: lanes::Share::Equal,
    }];
    Ok(vec![
        ("heavy", heavy),
        ("light", light),
        ("waiting", waiting),
        ("lint", lint),
    ])
}

/// Each step's commands: its target's binary among `binaries`.
fn steps_of(binaries: &[lanes::TestBinary], steps: Vec<TestStep>) -> Result<Vec<lanes::Step>> {
    steps
        .into_iter()
        .map(|(name, target, filters, what, env)| {
            Ok(lanes::Step {
                name,
                what,
                work: lanes::Work::Commands(lanes::target_commands(
                    binaries, target, filters, &env,
                )?),
                share: lanes::Share::Equal,
            })
        })
        .collect()
}

/// The unit step, made once `built` has the test binaries: every test
/// binary's non-ignored tests (unit, plugin host with real components,
/// CLI), but the integration targets in `skip`.
fn units_later(built: &std::sync::Arc<lanes::Built>, skip: Vec<&'static str>) -> lanes::Step {
    let built = std::sync::Arc::clone(built);
    lanes::Step {
        name: "the unit tests built by the light lane",
        what: "waits for the light lane's build",
        work: lanes::Work::Later(Box::new(move || {
            Ok(vec![lanes::Step {
                name: "unit tests",
                what: "every test binary's tests but the ignored ones: unit, plugin host with real components, CLI",
                work: lanes::Work::Commands(lanes::unit_commands(&built.wait()?, &skip)),
                share: lanes::Share::Equal,
            }])
        })),
        share: lanes::Share::Equal,
    }
}

/// `steps`, made once `built` has the test binaries.
fn later(built: &std::sync::Arc<lanes::Built>, steps: Vec<TestStep>) -> lanes::Step {
    let built = std::sync::Arc::clone(built);
    lanes::Step {
        name: "the tests built by the light lane",
        what: "waits for the light lane's build",
        work: lanes::Work::Later(Box::new(move || steps_of(&built.wait()?, steps))),
        share: lanes::Share::Equal,
    }
}

fn orchestrator_binary() -> Result<PathBuf> {
    build_binaries()?;
    let bin = root().join("target/release/orchestrator");
    if !bin.is_file() {
        bail!("expected {} after the build", bin.display());
    }
    Ok(bin)
}

/// Creates (or finds cached) the Ray venv, the vLLM venv and the tiny model.
fn prepare() -> Result<()> {
    let ray = ray_venv()?;
    let venv = vllm_venv()?;
    let model = tiny_model(&venv)?;
    eprintln!(
        "ray: {}\nvllm venv: {}\ntiny model: {}",
        ray.display(),
        venv.display(),
        model.display()
    );
    Ok(())
}

fn demo() -> Result<()> {
    ensure_toolchain()?;
    let serving = Preparing::start(|| {
        let venv = vllm_venv()?;
        let model = tiny_model(&venv)?;
        Ok((venv, model))
    });
    let bin = orchestrator_binary()?;
    let snapshots = root().join("examples/snapshots");
    step("built-in policies");
    run(Command::new(&bin).args(["plugin", "list"]))?;
    let cases = [
        ("builtin:node-count", "readiness-missing-worker.json"),
        ("builtin:node-count", "readiness-ready.json"),
        ("builtin:vllm", "launch-two-gpu-nodes.json"),
        ("builtin:vllm", "launch-impossible-tp4.json"),
        ("builtin:default", "health-server-exited.json"),
        ("builtin:default", "health-wedged-engine.json"),
        ("builtin:node-health/default", "node-readings-xid79.json"),
        (
            "builtin:node-health/default",
            "node-readings-throttled.json",
        ),
        ("builtin:scale/default", "scale-burst.json"),
        ("builtin:scale/default", "scale-quiet.json"),
    ];
    for (plugin, input) in cases {
        step(&format!(
            "orchestrator plugin run {plugin} --input examples/snapshots/{input}"
        ));
        run(Command::new(&bin)
            .args(["plugin", "run", plugin, "--input"])
            .arg(snapshots.join(input)))?;
    }
    step("the example custom policy (examples/accelerator-readiness, built with the tests)");
    let wasm = root().join("target/wasm-guests/wasm32-wasip2/release/accelerator_readiness.wasm");
    run(Command::new(&bin).args(["plugin", "check"]).arg(&wasm))?;
    run(Command::new(&bin)
        .args(["plugin", "run"])
        .arg(&wasm)
        .args([
            "--param",
            "accelerator=a100",
            "--param",
            "nodes=2",
            "--input",
        ])
        .arg(snapshots.join("readiness-worker-died.json")))?;
    step("`orchestrator plan` for the sample head configuration");
    run(Command::new(&bin)
        .args(["plan", "--config"])
        .arg(root().join("examples/config/head.toml")))?;

    step(
        "`orchestrator node check`: this node's GPUs, host and raylet, judged by the node-health policy",
    );
    // Exit 1 (degraded or unhealthy) is an answer here, not a failure.
    let checked = Command::new(&bin)
        .args(["node", "check"])
        .env("ORCHESTRATOR_LOG", "warn")
        .status()
        .context("cannot run orchestrator node check")?;
    eprintln!("    exit code {}", checked.code().unwrap_or(-1));

    let (venv, model) = serving.wait()?;
    serve_demo(&bin, &venv, &model, DemoBackend::Ray)?;
    serve_demo(&bin, &venv, &model, DemoBackend::Native)?;
    eprintln!("\ndemo finished");
    Ok(())
}

/// Which backend a demo run shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DemoBackend {
    Ray,
    Native,
}

/// The whole product on this machine: a head and a worker (Ray), or a
/// leader and a rank (native: vLLM's own multi-node mode, no Ray), the
/// wait, real vLLM tensor-parallel over both, one completion, a clean stop.
fn serve_demo(bin: &Path, venv: &Path, model: &Path, backend: DemoBackend) -> Result<()> {
    let mut command = Command::new(bin);
    command.args(["local", "--workers", "1", "--tp", "2"]);
    let log_path = match backend {
        DemoBackend::Ray => {
            step(
                "the whole job: `orchestrator local --workers 1 --tp 2 --model <tiny>` (real Ray, real vLLM)",
            );
            command
                .args([
                    "--gpus-per-node",
                    "1",
                    "--memory-mib",
                    "1000",
                    "--object-store-mib",
                    "200",
                ])
                .args([
                    "--ray-env",
                    "VLLM_CPU_RAY_TEST_PLATFORM=1",
                    "--vllm-env",
                    "VLLM_CPU_RAY_TEST_PLATFORM=1",
                ]);
            root().join("target/demo-orchestrator.log")
        }
        DemoBackend::Native => {
            step(
                "the same job without Ray: `orchestrator local --backend native --workers 1 --tp 2 --model <tiny>` (vLLM's own multi-node mode: a leader and one headless rank)",
            );
            command.args(["--backend", "native"]);
            root().join("target/demo-orchestrator-native.log")
        }
    };
    let log = std::fs::File::create(&log_path)?;
    let mut child = command
        .args([
            "--vllm-env",
            "VLLM_CPU_KVCACHE_SPACE=1",
            "--vllm-env",
            "HF_HUB_OFFLINE=1",
        ])
        .args([
            "--vllm-arg=--max-model-len",
            "--vllm-arg=256",
            "--vllm-arg=--dtype",
            "--vllm-arg=bfloat16",
            "--vllm-arg=--enforce-eager",
        ])
        .arg("--model")
        .arg(model)
        .arg("--prefetch")
        .arg(model)
        .env("ORCHESTRATOR_RAY_BIN", venv.join("bin/ray"))
        .env("ORCHESTRATOR_VLLM_BIN", venv.join("bin/vllm"))
        .stdout(std::process::Stdio::inherit())
        .stderr(log)
        .spawn()
        .context("cannot start the orchestrator")?;
    eprintln!("    its log: {}", log_path.display());
    let endpoints = "127.0.0.1:8471";
    let start = Instant::now();
    let mut last = String::new();
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "the orchestrator exited ({status}); see {}",
                log_path.display()
            ));
        }
        if start.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!(
                "not ready after 10 minutes; see {}",
                log_path.display()
            ));
        }
        if let Some(status) = test_support::status(endpoints) {
            let phase = status["phase"].as_str().unwrap_or_default().to_string();
            let nodes = format!(
                "{}/{} nodes",
                status["nodes-alive"], status["nodes-expected"]
            );
            let health = status["last-health"].as_str().unwrap_or_default();
            let health = health.split(" for ").next().unwrap_or("").to_string();
            let now = format!(
                "phase {phase}, {nodes}{}",
                if health.is_empty() {
                    String::new()
                } else {
                    format!(", {health}")
                }
            );
            if now != last {
                eprintln!("    [{:>5.1} s] {now}", start.elapsed().as_secs_f64());
                last = now;
            }
        }
        if test_support::http(endpoints, "GET", "/readyz", "", Duration::from_secs(2))
            .is_some_and(|r| r.status == 200)
        {
            break Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let result = outcome.and_then(|()| {
        eprintln!(
            "    [{:>5.1} s] ready: sending one completion",
            start.elapsed().as_secs_f64()
        );
        let reply = test_support::http(
            "127.0.0.2:8000",
            "POST",
            "/v1/completions",
            r#"{"model": "tiny", "prompt": "The orchestrator", "max_tokens": 8, "temperature": 0}"#,
            Duration::from_secs(120),
        )
        .context("no answer to the completion")?;
        if reply.status != 200 {
            bail!("the completion failed: {} {}", reply.status, reply.body);
        }
        println!(
            "\ncompletion from vLLM (tensor parallel over {}):\n{}\n",
            match backend {
                DemoBackend::Ray => "2 Ray nodes",
                DemoBackend::Native => "2 native ranks, no Ray",
            },
            reply.body
        );
        Ok(())
    });
    step("stop: SIGTERM to the orchestrator");
    // Through the kill system call, never the `kill` program.
    test_support::signal(child.id() as i32, test_support::Sig::TERM);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("    orchestrator exited: {status}");
    result?;
    if !status.success() {
        bail!(
            "the orchestrator did not exit cleanly; see {}",
            log_path.display()
        );
    }
    Ok(())
}

fn bench(name: Option<&str>) -> Result<()> {
    match name {
        Some("features") => {
            ensure_toolchain()?;
            step("bench features");
            features_bench::bench(cargo, &root())
        }
        Some("plugins") => {
            ensure_toolchain()?;
            build_all()?;
            step("bench plugins");
            run(&mut Command::new(example("bench_plugins")))
        }
        Some("serve") => {
            ensure_toolchain()?;
            let venv = vllm_venv()?;
            let model = tiny_model(&venv)?;
            build_all()?;
            step("bench serve");
            run(Command::new(example("bench_serve"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_RAY_BIN", venv.join("bin/ray"))
                .env("ORCHESTRATOR_VLLM_BIN", venv.join("bin/vllm"))
                .env("ORCHESTRATOR_TINY_MODEL", &model))
        }
        Some("native") => {
            ensure_toolchain()?;
            let venv = vllm_venv()?;
            let model = tiny_model(&venv)?;
            build_all()?;
            step("bench native");
            run(Command::new(example("bench_native"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_VLLM_BIN", venv.join("bin/vllm"))
                .env("ORCHESTRATOR_TINY_MODEL", &model))
        }
        Some("coldstart") => {
            ensure_toolchain()?;
            let venv = vllm_venv()?;
            let model = large_model(&venv)?;
            let nginx = nginx_server()?;
            build_all()?;
            step("bench coldstart");
            run(Command::new(example("bench_coldstart"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_VLLM_BIN", venv.join("bin/vllm"))
                .env("ORCHESTRATOR_NGINX_BIN", nginx)
                .env("ORCHESTRATOR_LARGE_MODEL", &model))
        }
        Some("startup") => {
            ensure_toolchain()?;
            let venv = vllm_venv()?;
            let model = tiny_model(&venv)?;
            stacks_tool(&venv)?;
            build_all()?;
            step("bench startup");
            run(Command::new(example("bench_startup"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_RAY_BIN", venv.join("bin/ray"))
                .env("ORCHESTRATOR_VLLM_BIN", venv.join("bin/vllm"))
                .env("ORCHESTRATOR_PY_SPY_BIN", venv.join("bin/py-spy"))
                .env("ORCHESTRATOR_TINY_MODEL", &model))
        }
        Some("scale") => {
            ensure_toolchain()?;
            let ray = ray_venv()?;
            build_all()?;
            step("bench scale");
            run(Command::new(example("bench_scale"))
                .arg(root().join("target/release/orchestrator"))
                .arg(root().join("crates/orchestrator/tests/fixtures/autoscaler"))
                .env("ORCHESTRATOR_RAY_BIN", &ray))
        }
        Some("scale-wait") => {
            ensure_toolchain()?;
            build_all()?;
            step("bench scale-wait");
            run(Command::new(example("bench_scale_wait"))
                .arg(root().join("target/release/orchestrator")))
        }
        Some("health") => {
            ensure_toolchain()?;
            let ray = ray_venv()?;
            build_all()?;
            step("bench health");
            run(Command::new(example("bench_health"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_RAY_BIN", &ray))
        }
        Some("prefetch") => {
            ensure_toolchain()?;
            build_all()?;
            step("bench prefetch");
            run(&mut Command::new(example("bench_prefetch")))
        }
        Some("authoring") => {
            ensure_toolchain()?;
            let python = policy_venv()?;
            build_all()?;
            let out = root().join("target/python-policies");
            std::fs::create_dir_all(&out)?;
            let wasm = out.join("accelerator_readiness.wasm");
            step("build the Python example policy (componentize-py)");
            run(Command::new(&python)
                .args(["-m", "orchestrator_policy.build"])
                .arg(root().join("examples/accelerator-readiness-python/accelerator_readiness.py"))
                .arg("-o")
                .arg(&wasm))?;
            step("bench authoring");
            run(Command::new(example("bench_authoring")).arg(&wasm))
        }
        Some("wait") => {
            ensure_toolchain()?;
            let ray = ray_venv()?;
            build_all()?;
            step("bench wait");
            run(Command::new(example("bench_wait"))
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_RAY_BIN", &ray))
        }
        other => {
            let known: Vec<String> = BENCHES.iter().map(|(n, d)| format!("  {n}: {d}")).collect();
            bail!(
                "unknown benchmark {:?}; available:\n{}",
                other.unwrap_or(""),
                known.join("\n")
            )
        }
    }
}
