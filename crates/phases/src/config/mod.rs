//! The orchestrator's configuration.
//!
//! A TOML file (`orchestrator run --config FILE`), then environment
//! variables, then `--set` flags, each overriding the one before:
//!
//! - `--set ray.num-cpus=4` sets any field by its dotted path;
//! - `ORCHESTRATOR__RAY__NUM_CPUS=4` does the same from the environment
//!   (`__` separates levels, `_` stands for `-`).
//!
//! Unknown fields are errors that name the field, and every check says how
//! to fix what it found. One file a section: [`Config`] and its loading
//! here; `[ray]` in `ray.rs`, `[serve]` in `serve.rs` (its `[serve.prefetch]`
//! in `prefetch.rs`, `[serve.preflight]` in `preflight.rs`), `[policies]` in `policies.rs`, `[plugins]` in
//! `plugins.rs`, `[registry]` in `registry.rs`, `[scale]` in `scale.rs`,
//! `[node-health]` in `node_health.rs`, `[native]` in `native.rs`; the
//! checks of every section in `checks.rs` (entry point: [`Config::load`]).

pub use orchestrator_domain::{ClusterConfig, GroupConfig, Role};
/// The default port of the endpoints: clashes with none of Ray's (6379,
/// 8265, 8080, 52365) or vLLM's (8000).
pub const DEFAULT_ENDPOINTS_PORT: u16 = 8471;

mod checks;
mod compile_cache;
mod native;
mod node_health;
mod plugins;
mod policies;
mod prefetch;
mod preflight;
mod ray;
mod registry;
mod scale;
mod serve;
mod weights;
pub use compile_cache::CompileCacheConfig;
pub use native::{Backend, GroupSecret, NativeConfig, SECRET_ENV, SecretFileError, group_secret};
pub use node_health::NodeHealthConfig;
pub use plugins::PluginLimits;
pub use policies::{PoliciesConfig, PolicyConfig};
pub use prefetch::{CopyToProblem, PrefetchConfig};
pub use preflight::{CollectiveBackend, PreflightConfig, PreflightMode};
pub use ray::{GcsFaultTolerance, RayConfig};
pub use registry::RegistryConfig;
pub use scale::ScaleConfig;
pub use serve::ServeConfig;
pub use weights::{OriginKind, WeightsConfig, WeightsProblem};

pub use orchestrator_kubernetes::KubernetesConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The prefix of configuration environment variables.
pub(crate) const ENV_PREFIX: &str = "ORCHESTRATOR__";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// `head` or `worker` (with the native backend, the rank decides).
    pub role: Role,
    /// `ray` (default) or `native` (vLLM's own multi-node mode, no Ray).
    pub backend: Backend,
    /// The native backend's group.
    pub native: NativeConfig,
    /// The open-file limit for the whole process tree.
    pub open_file_limit: u64,
    /// How Ray is started.
    pub ray: RayConfig,
    /// The cluster the head waits for.
    pub cluster: ClusterConfig,
    /// Which policy serves each phase.
    pub policies: PoliciesConfig,
    /// Limits of the plugin host.
    pub plugins: PluginLimits,
    /// How the model is served (the serve phase).
    pub serve: ServeConfig,
    /// Kubernetes awareness (off unless enabled).
    pub kubernetes: KubernetesConfig,
    /// Every node's own health checks (GPUs, host, raylet).
    pub node_health: NodeHealthConfig,
    /// The port of `/livez`, `/readyz`, `/status` and `/metrics` (0: off).
    pub endpoints_port: u16,
    /// The address the endpoints bind.
    pub endpoints_host: String,
    /// How policies named `oci://` are pulled.
    pub registry: RegistryConfig,
    /// Head: the replicas the serving load needs, recommended by the
    /// scale policy and exported for an autoscaler (off unless enabled).
    pub scale: ScaleConfig,
    /// Which launch values are secrets, shown as `<redacted>` everywhere.
    pub secrets: SecretsConfig,
}

/// Which environment names and flags are secrets, beyond the defaults
/// (`*TOKEN*`, `*PASSWORD*`, `*SECRET*`, `*_KEY`, `*CREDENTIAL*`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Exact environment names (or flag names, `API_KEY` for `--api-key`).
    pub names: Vec<String>,
    /// Patterns of names, `*` for any run of characters.
    pub patterns: Vec<String>,
}

impl SecretsConfig {
    /// The rules, for [`orchestrator_domain::secrets::install`].
    pub fn rules(&self) -> orchestrator_domain::secrets::Secrets {
        orchestrator_domain::secrets::Secrets::with(&self.names, &self.patterns)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            role: Role::Head,
            backend: Backend::Ray,
            native: NativeConfig::default(),
            open_file_limit: 65536,
            ray: RayConfig::default(),
            cluster: ClusterConfig::default(),
            policies: PoliciesConfig::default(),
            plugins: PluginLimits::default(),
            serve: ServeConfig::default(),
            kubernetes: KubernetesConfig::default(),
            node_health: NodeHealthConfig::default(),
            scale: ScaleConfig::default(),
            endpoints_port: DEFAULT_ENDPOINTS_PORT,
            endpoints_host: "0.0.0.0".to_string(),
            registry: RegistryConfig::default(),
            secrets: SecretsConfig::default(),
        }
    }
}

/// A configuration that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The TOML is malformed, has an unknown field or a wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the bad value came from (file, variable, flag).
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// An override is not `path=value`.
    #[error("{origin}: {message}")]
    Override {
        /// The flag or variable.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("invalid configuration: `{field}` {problem}; {fix}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

/// The `ORCHESTRATOR__*` variables of an environment read as bytes
/// (`std::env::vars_os()`): anything else is not ours and is skipped
/// whatever it holds (containers carry variables that are not UTF-8); one
/// of ours that is not UTF-8 is refused by name.
pub fn orchestrator_variables(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    use std::os::unix::ffi::OsStrExt;
    let mut ours = Vec::new();
    for (key, value) in vars {
        if !key.as_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let name = String::from_utf8_lossy(key.as_bytes()).into_owned();
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => ours.push((k, v)),
            (Err(_), _) => {
                return Err(ConfigError::Override {
                    origin: format!("environment variable {name}"),
                    message: "its name is not UTF-8; remove it or spell it in ASCII".into(),
                });
            }
            (Ok(_), Err(_)) => {
                return Err(ConfigError::Override {
                    origin: format!("environment variable {name}"),
                    message: "its value is not UTF-8; set it to UTF-8 text".into(),
                });
            }
        }
    }
    Ok(ours)
}

impl Config {
    /// Loads `file` (if any), then applies `ORCHESTRATOR__*` variables from
    /// `env`, then `--set` overrides, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        Self::load_as(file, env, sets, None)
    }

    /// Like [`load`](Self::load), with `role` (the `--role` flag), when
    /// given, overriding every other source.
    pub fn load_as(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
        role: Option<Role>,
    ) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        origin: path.display().to_string(),
                        message: e.to_string().trim().replace('\n', " "),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (key, value) in env {
            let path = key[ENV_PREFIX.len()..]
                .split("__")
                .map(|part| part.to_lowercase().replace('_', "-"))
                .collect::<Vec<_>>()
                .join(".");
            set_path(&mut tree, &path, &value).map_err(|message| ConfigError::Override {
                origin: format!("environment variable {key}"),
                message,
            })?;
        }
        for set in sets {
            let (path, value) = set.split_once('=').ok_or_else(|| ConfigError::Override {
                origin: format!("--set {set:?}"),
                message: "expected PATH=VALUE, e.g. --set ray.num-cpus=4".to_string(),
            })?;
            set_path(&mut tree, path.trim(), value).map_err(|message| ConfigError::Override {
                origin: format!("--set {set:?}"),
                message,
            })?;
        }
        let origin = file.map_or_else(|| "configuration".to_string(), |p| p.display().to_string());
        let mut config: Config =
            toml::Value::Table(tree)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin,
                    message: format!(
                        "{}; see examples/config/ for every field",
                        e.to_string().trim().replace('\n', " ")
                    ),
                })?;
        if let Some(role) = role {
            config.role = role;
        }
        config.validate()?;
        // The process shows launch values under these rules from now on.
        orchestrator_domain::secrets::install(config.secrets.rules());
        Ok(config)
    }

    /// Checks values that parse but cannot work (see [`checks`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        checks::validate(self)
    }
}

/// Sets `a.b.c = value` in a TOML table; the value is parsed as TOML when
/// it can be (numbers, booleans, arrays, inline tables), else kept as text.
fn set_path(tree: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "{path:?} is not a field path; write it like ray.num-cpus"
        ));
    }
    let value = parse_value(raw);
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| "empty field path".to_string())?;
    let mut table = tree;
    for (i, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a section", parts[..=i].join(".")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod environment_tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn variables_not_ours_are_skipped_whatever_they_hold_and_ours_must_be_utf8() {
        let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
        let vars = vec![
            (bytes(b"LANG_JUNK"), bytes(b"\xff\xfe")),
            (bytes(b"\xffODD"), bytes(b"x")),
            (bytes(b"ORCHESTRATOR__RAY__NUM_CPUS"), bytes(b"4")),
        ];
        let ours = orchestrator_variables(vars).unwrap();
        assert_eq!(
            ours,
            vec![("ORCHESTRATOR__RAY__NUM_CPUS".to_string(), "4".to_string())]
        );
        let bad = orchestrator_variables(vec![(
            bytes(b"ORCHESTRATOR__SERVE__MODEL"),
            bytes(b"m\xff"),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("ORCHESTRATOR__SERVE__MODEL") && bad.contains("not UTF-8"),
            "{bad}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::PolicyRef;

    fn load(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn every_duration_size_and_count_is_bounded_with_the_key_and_range_named() {
        for (text, key) in [
            (
                "[cluster]\nwait-timeout-seconds = 9223372036854775807\n",
                "cluster.wait-timeout-seconds",
            ),
            (
                "[serve]\nstop-grace-seconds = 9223372036854775807\n",
                "serve.stop-grace-seconds",
            ),
            ("[native]\nheartbeat-ms = 0\n", "native.heartbeat-ms"),
            (
                "[node-health]\ninterval-ms = 9223372036854775807\n",
                "node-health.interval-ms",
            ),
            (
                "[registry]\ntimeout-seconds = 9223372036854775807\n",
                "registry.timeout-seconds",
            ),
            ("[native]\ngpus = 1e300\n", "native.gpus"),
            (
                "[serve.stage-deadlines]\nprocess-up = 0\n",
                "serve.stage-deadlines.process-up",
            ),
            (
                "[serve.stage-deadlines]\ndistributed-init = 9223372036854775807\n",
                "serve.stage-deadlines.distributed-init",
            ),
            (
                "[serve.preflight]\ntimeout-seconds = 0\n",
                "serve.preflight.timeout-seconds",
            ),
            (
                "[serve.preflight]\nmax-p2p-ms = 9223372036854775807\n",
                "serve.preflight.max-p2p-ms",
            ),
        ] {
            let e = load(text, &[], &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key) && e.contains(" to "), "{text}: {e}");
        }
        // A value in range loads.
        assert!(load("[cluster]\nwait-timeout-seconds = 86400\n", &[], &[]).is_ok());
        let c = load("[serve.stage-deadlines]\nweights-loaded = 7200\n", &[], &[]).unwrap();
        assert_eq!(c.serve.stage_deadlines.weights_loaded, 7200);
        assert_eq!(
            c.serve.stage_deadlines.process_up, 600,
            "the others keep their defaults"
        );
        let c = load(
            "[serve.preflight]\nmode = \"required\"\nbackend = \"nccl\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.serve.preflight.mode, PreflightMode::Required);
        assert_eq!(c.serve.preflight.backend, CollectiveBackend::Nccl);
        assert_eq!(c.serve.preflight.timeout_seconds, 60);
        let e = load("[serve.preflight]\nmode = \"maybe\"\n", &[], &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("maybe") || e.contains("mode"), "{e}");
        // require-signature needs a key.
        let e = load("[registry]\nrequire-signature = true\n", &[], &[])
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("public-key")));
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = load(
            "role = \"worker\"\n[ray]\ngcs-address = \"h:6379\"\nnum-cpus = 2\n",
            &[
                ("ORCHESTRATOR__RAY__NUM_CPUS", "3"),
                ("ORCHESTRATOR__CLUSTER__NODES", "4"),
                ("OTHER", "x"),
            ],
            &["ray.num-cpus=5", "ray.labels={accelerator=\"a100\"}"],
        )
        .expect("valid");
        assert_eq!(c.role, Role::Worker);
        assert_eq!(c.ray.num_cpus, Some(5.0));
        assert_eq!(c.cluster.nodes, Some(4));
        assert_eq!(
            c.ray.labels.get("accelerator").map(String::as_str),
            Some("a100")
        );
        assert_eq!(c.open_file_limit, 65536);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = load("[ray]\nnum-cpu = 2\n", &[], &[]).expect_err("unknown field");
        let text = err.to_string();
        assert!(text.contains("num-cpu"), "{text}");
        let err = load("", &[], &["cluster.node=3"]).expect_err("unknown field");
        assert!(err.to_string().contains("`node`"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_values_name_the_field_and_fix() {
        let err = load("[cluster]\nnodes = \"three\"\n", &[], &[]).expect_err("type");
        assert!(err.to_string().contains("nodes"), "{err}");
        let err = load("role = \"worker\"\n", &[], &[]).expect_err("no address");
        assert!(
            err.to_string().contains("ray.gcs-address") && err.to_string().contains("head's GCS"),
            "{err}"
        );
        let err = load(
            "[policies.readiness]\nfile = \"p.wasm\"\nsha256 = \"abc\"\n",
            &[],
            &[],
        )
        .expect_err("sha");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let err = load("[kubernetes]\napi-server = \"kube:6443\"\n", &[], &[]).expect_err("url");
        assert!(err.to_string().contains("kubernetes.api-server"), "{err}");
        let err = load("", &[], &["ray.num-cpus"]).expect_err("no =");
        assert!(err.to_string().contains("PATH=VALUE"), "{err}");
    }

    #[test]
    fn every_example_configuration_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/config") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                // Workers need the head's address, or KubeRay's command.
                let sets = vec!["ray.use-kuberay-command=true".to_string()];
                Config::load(Some(&path), std::iter::empty(), &sets)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 3, "{n} examples");
    }

    #[test]
    fn registry_policies_are_checked_before_anything_starts() {
        let pin = format!("sha256:{}", "a".repeat(64));
        let c = load(
            &format!(
                "[policies.readiness]\noci = \"oci://reg.example/team/r:v1@{pin}\"\n[registry]\ninsecure = [\"reg.example\"]\n"
            ),
            &[],
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.policies.readiness.policy("node-count"),
            PolicyRef::Oci(format!("oci://reg.example/team/r:v1@{pin}"))
        );
        for (text, field, problem) in [
            (
                "[policies.launch]\nbuiltin = \"vllm\"\noci = \"oci://r/x:v1\"\n",
                "policies.launch",
                "more than one of",
            ),
            (
                "[policies.health]\noci = \"r/x:v1\"\n",
                "policies.health.oci",
                "is not an OCI reference",
            ),
            (
                "[policies.health]\noci = \"oci://r/x\"\n",
                "policies.health.oci",
                "neither a tag nor a digest",
            ),
            (
                "[registry]\nmax-layer-mib = 0\n",
                "registry.max-layer-mib",
                "is 0",
            ),
            (
                "[registry]\ninsecure = [\"http://r:5000\"]\n",
                "registry.insecure",
                "not HOST[:PORT]",
            ),
        ] {
            let err = load(text, &[], &[]).expect_err(text).to_string();
            assert!(
                err.contains(field) && err.contains(problem),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn topology_counts_head_and_groups() {
        let c = load(
            "[cluster]\ngpus = 4\n[[cluster.groups]]\nname = \"gpu\"\nreplicas = 2\ngpus-per-node = 2\n",
            &[],
            &[],
        )
        .expect("valid");
        let t = c.cluster.topology();
        assert_eq!(t.nodes, 3);
        assert_eq!(t.groups.len(), 1);
    }
}

#[cfg(test)]
mod hostile_configuration {
    //! Property tests: any configuration text, environment override and
    //! `--set` loads or is refused with an error; never a panic.
    use super::*;
    use proptest::prelude::*;

    /// Paths that exist, so values reach the typed fields.
    const PATHS: [&str; 14] = [
        "role",
        "open-file-limit",
        "endpoints-port",
        "backend",
        "ray.num-cpus",
        "ray.num-gpus",
        "ray.memory",
        "ray.gcs-address",
        "ray.extra-args",
        "cluster.nodes",
        "cluster.wait-timeout-seconds",
        "serve.model",
        "native.rank",
        "plugins.call-timeout-ms",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("-1".to_string()),
            Just("1e400".to_string()),
            Just("nan".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"\"".to_string()),
            Just("[1, \"a\", {}]".to_string()),
            Just("{ a = { b = 1 } }".to_string()),
            Just("\"$(id)\"".to_string()),
            "\\PC{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_text_loads_or_is_refused(text in "\\PC{0,300}") {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.toml");
            std::fs::write(&file, &text).unwrap();
            let _ = Config::load(Some(&file), Vec::<(String, String)>::new(), &[]);
        }

        #[test]
        fn any_override_loads_or_is_refused(
            path in prop::sample::select(PATHS.to_vec()),
            raw_path in "\\PC{0,20}",
            set in value(),
            env in value(),
        ) {
            let env_key = format!("{ENV_PREFIX}{}", path.to_uppercase().replace('.', "__").replace('-', "_"));
            let sets = [format!("{path}={set}"), format!("{raw_path}={set}"), raw_path.clone()];
            let _ = Config::load(None, vec![(env_key, env)], &sets);
        }
    }
}
