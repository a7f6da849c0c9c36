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
//! to fix what it found.

pub use orchestrator_domain::{ClusterConfig, GroupConfig, Role};
/// The default port of the endpoints: clashes with none of Ray's (6379,
/// 8265, 8080, 52365) or vLLM's (8000).
pub const DEFAULT_ENDPOINTS_PORT: u16 = 8471;

mod checks;
mod native;
mod prefetch;
pub use native::{Backend, NativeConfig};
pub use prefetch::PrefetchConfig;

use orchestrator_domain::{KeyValue, ServeSettings};
pub use orchestrator_kubernetes::KubernetesConfig;
use orchestrator_policy_host::World;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "ORCHESTRATOR__";

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

/// How policies named `oci://HOST/REPO:TAG@sha256:...` are pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A Docker `config.json` with the logins (a Kubernetes image pull
    /// secret's `.dockerconfigjson`); default: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` when present.
    pub credentials: Option<PathBuf>,
    /// Registries (`HOST[:PORT]`) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Where pulled policies are kept by digest (default:
    /// `$ORCHESTRATOR_OCI_CACHE_DIR` or `~/.cache/ray-orchestrator/oci`).
    pub cache_dir: Option<PathBuf>,
    /// The largest policy layer accepted, MiB.
    pub max_layer_mib: u64,
    /// Deadline of each registry request, seconds.
    pub timeout_seconds: u64,
    /// Use a policy only with a signature by `public-key` (cosign's
    /// layout, checked offline); fails closed.
    pub require_signature: bool,
    /// The PEM public key (ECDSA P-256) signatures are checked with.
    pub public_key: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            credentials: None,
            insecure: Vec::new(),
            cache_dir: None,
            max_layer_mib: 64,
            timeout_seconds: 60,
            require_signature: false,
            public_key: None,
        }
    }
}

impl RegistryConfig {
    /// The OCI client's settings (credentials read now).
    pub fn settings(
        &self,
    ) -> Result<orchestrator_oci::RegistrySettings, orchestrator_oci::CredentialsError> {
        let cache_dir = self
            .cache_dir
            .clone()
            .or_else(|| std::env::var_os("ORCHESTRATOR_OCI_CACHE_DIR").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/ray-orchestrator/oci"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("ray-orchestrator-oci"));
        let credentials = match self
            .credentials
            .clone()
            .or_else(orchestrator_oci::Credentials::default_file)
        {
            Some(file) => orchestrator_oci::Credentials::load(&file)?,
            None => orchestrator_oci::Credentials::none(),
        };
        let mut settings = orchestrator_oci::RegistrySettings::new(cache_dir);
        settings.credentials = credentials;
        settings.insecure = self.insecure.clone();
        settings.max_layer_bytes = self.max_layer_mib.saturating_mul(1 << 20);
        settings.timeout = std::time::Duration::from_secs(self.timeout_seconds.max(1));
        if self.require_signature {
            let path = self.public_key.clone().unwrap_or_default();
            let bad = |detail: String| orchestrator_oci::CredentialsError::PublicKey {
                path: path.clone(),
                detail,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let key =
                orchestrator_oci::VerifyingKey::from_pem(&text).map_err(|e| bad(e.to_string()))?;
            settings.require_signature = Some(key);
        }
        Ok(settings)
    }
}

/// How Ray is started on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RayConfig {
    /// The `ray` executable.
    pub bin: PathBuf,
    /// The head's GCS as `HOST:PORT` (workers join it; the head waits on it).
    pub gcs_address: Option<String>,
    /// The port the head's GCS listens on.
    pub gcs_port: u16,
    /// This node's IP address (`--node-ip-address`).
    pub node_ip: Option<String>,
    /// Logical CPUs (`--num-cpus`).
    pub num_cpus: Option<f64>,
    /// GPUs (`--num-gpus`).
    pub num_gpus: Option<f64>,
    /// Memory for tasks and actors, bytes (`--memory`).
    pub memory: Option<u64>,
    /// Object-store memory, bytes (`--object-store-memory`).
    pub object_store_memory: Option<u64>,
    /// Node labels (`--labels`).
    pub labels: BTreeMap<String, String>,
    /// Custom resources (`--resources`).
    pub resources: BTreeMap<String, f64>,
    /// Dashboard port on the head (`--dashboard-port`).
    pub dashboard_port: Option<u16>,
    /// Dashboard bind address on the head (`--dashboard-host`).
    pub dashboard_host: Option<String>,
    /// The dashboard agent's port (`--dashboard-agent-listen-port`).
    pub dashboard_agent_listen_port: Option<u16>,
    /// Metrics export port (`--metrics-export-port`).
    pub metrics_export_port: Option<u16>,
    /// Ray's temp dir on the head (`--temp-dir`).
    pub temp_dir: Option<PathBuf>,
    /// More `ray start` arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Start Ray from `KUBERAY_GEN_RAY_START_CMD` (parsed without a shell,
    /// `--block` dropped) with the fields above as overrides.
    pub use_kuberay_command: bool,
    /// Seconds a worker waits for the head's GCS before `ray start`.
    pub gcs_wait_seconds: u64,
    /// Seconds Ray's processes get after SIGTERM before SIGKILL.
    pub stop_grace_seconds: u64,
    /// Environment variables for Ray's processes.
    pub env: BTreeMap<String, String>,
    /// GCS fault tolerance (KubeRay's `gcsFaultToleranceOptions`): the
    /// head's GCS keeps its tables in Redis, so a restarted head recovers
    /// the cluster and the workers ride out the outage.
    pub gcs_fault_tolerance: Option<GcsFaultTolerance>,
}

/// `[ray.gcs-fault-tolerance]`: one section for both roles. The head uses
/// the Redis fields; every node uses the reconnect timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GcsFaultTolerance {
    /// `HOST:PORT` of the Redis the head's GCS writes to
    /// (`RAY_REDIS_ADDRESS`); required on the head.
    pub redis_address: Option<String>,
    /// The environment variable holding Redis's password (passed as
    /// `--redis-password`; never written into a file); unset: no password.
    pub redis_password_env: Option<String>,
    /// Keys the cluster's tables in Redis (`RAY_external_storage_namespace`);
    /// a restarted head must use the same one to recover its cluster.
    pub external_storage_namespace: Option<String>,
    /// How long raylets keep trying to reach a GCS that went away
    /// (`RAY_gcs_rpc_server_reconnect_timeout_s`; Ray's default is 60).
    pub reconnect_timeout_seconds: u64,
}

impl Default for GcsFaultTolerance {
    fn default() -> Self {
        Self {
            redis_address: None,
            redis_password_env: None,
            external_storage_namespace: None,
            reconnect_timeout_seconds: 600,
        }
    }
}

impl GcsFaultTolerance {
    /// The variables Ray's processes get for `role` (explicit `ray.env`
    /// entries win over these).
    pub fn env(&self, role: Role) -> Vec<(String, String)> {
        let mut env = vec![(
            "RAY_gcs_rpc_server_reconnect_timeout_s".to_string(),
            self.reconnect_timeout_seconds.to_string(),
        )];
        if role == Role::Head {
            if let Some(address) = &self.redis_address {
                env.push(("RAY_REDIS_ADDRESS".to_string(), address.clone()));
            }
            if let Some(namespace) = &self.external_storage_namespace {
                env.push((
                    "RAY_external_storage_namespace".to_string(),
                    namespace.clone(),
                ));
            }
        }
        env
    }
}

impl Default for RayConfig {
    fn default() -> Self {
        Self {
            bin: PathBuf::from("ray"),
            gcs_address: None,
            gcs_port: 6379,
            node_ip: None,
            num_cpus: None,
            num_gpus: None,
            memory: None,
            object_store_memory: None,
            labels: BTreeMap::new(),
            resources: BTreeMap::new(),
            dashboard_port: None,
            dashboard_host: None,
            dashboard_agent_listen_port: None,
            metrics_export_port: None,
            temp_dir: None,
            extra_args: vec![],
            use_kuberay_command: false,
            gcs_wait_seconds: 300,
            stop_grace_seconds: 10,
            env: BTreeMap::new(),
            gcs_fault_tolerance: None,
        }
    }
}

/// Which plugin serves one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A built-in policy's name.
    pub builtin: Option<String>,
    /// A component file.
    pub file: Option<PathBuf>,
    /// The file's sha256 (hex); the plugin is refused if it differs.
    pub sha256: Option<String>,
    /// A policy in an OCI registry, `oci://HOST/REPO:TAG@sha256:DIGEST`
    /// (the digest that `orchestrator plugin push` prints pins it).
    pub oci: Option<String>,
    /// The policy's parameters.
    pub params: BTreeMap<String, String>,
}

impl PolicyConfig {
    /// The parameters as key/value pairs.
    pub fn params(&self) -> Vec<KeyValue> {
        self.params
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect()
    }
}

/// The policy of each phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Readiness (default: built-in `node-count`).
    pub readiness: PolicyConfig,
    /// Launch (default: built-in `vllm`).
    pub launch: PolicyConfig,
    /// Health (default: built-in `default`).
    pub health: PolicyConfig,
    /// Node health, on every node (default: built-in `default`).
    pub node_health: PolicyConfig,
    /// Scale, on the head while serving with `[scale] enabled` (default:
    /// built-in `default`).
    pub scale: PolicyConfig,
}

impl PoliciesConfig {
    /// The configuration of `world`'s policy and its default built-in.
    pub fn for_world(&self, world: World) -> (&PolicyConfig, &'static str) {
        match world {
            World::Readiness => (&self.readiness, "node-count"),
            World::Launch => (&self.launch, "vllm"),
            World::Health => (&self.health, "default"),
            World::NodeHealth => (&self.node_health, "default"),
            World::Scale => (&self.scale, "default"),
        }
    }
}

/// Every node's own health checks: probes at an interval, the node-health
/// policy's verdict published in Ray's GCS for the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeHealthConfig {
    /// Whether this node checks itself and the head follows the reports.
    pub enabled: bool,
    /// How often the probes read and the verdict is published, ms.
    pub interval_ms: u64,
    /// A node whose report has not changed for this long is `stale`, ms.
    pub stale_after_ms: u64,
    /// How often the head reads every node's report, ms.
    pub follow_interval_ms: u64,
    /// How long a worker stays unhealthy before it stops its Ray node and
    /// exits with code 3 (so that Kubernetes replaces the pod), seconds.
    pub unhealthy_grace_seconds: u64,
}

impl Default for NodeHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 1000,
            stale_after_ms: 5000,
            follow_interval_ms: 250,
            unhealthy_grace_seconds: 30,
        }
    }
}

/// The head's load-driven recommendation: vLLM's `/metrics` read at an
/// interval, a window of samples judged by the scale policy, the answer
/// exported as `orchestrator_desired_replicas` for HPA, KEDA or AIBrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ScaleConfig {
    /// Whether the head samples the load and asks the scale policy.
    pub enabled: bool,
    /// How often a sample is taken (and the policy asked), ms.
    pub interval_ms: u64,
    /// How much load history the policy sees, seconds.
    pub window_seconds: u64,
    /// The least replicas a recommendation may name.
    pub min_replicas: u32,
    /// The most replicas a recommendation may name.
    pub max_replicas: u32,
    /// The serving replicas the load is spread over now (this head sees
    /// its own share): 1 for a lone RayCluster; for a fleet, its replicas
    /// (e.g. through the environment override from the fleet's spec).
    pub current_replicas: u32,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_ms: 5000,
            window_seconds: 60,
            min_replicas: 1,
            max_replicas: 8,
            current_replicas: 1,
        }
    }
}

/// Limits of the plugin host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Deadline of one plugin call, ms.
    pub call_timeout_ms: u64,
    /// Memory cap of one plugin instance, MiB.
    pub memory_limit_mib: usize,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginLimits {
    /// The host's own defaults (100 ms, 64 MiB, the user's cache dir).
    fn default() -> Self {
        let host = orchestrator_policy_host::HostConfig::default();
        Self {
            call_timeout_ms: host.call_timeout.as_millis() as u64,
            memory_limit_mib: host.memory_limit_bytes / (1024 * 1024),
            cache_dir: None,
        }
    }
}

impl PluginLimits {
    /// The plugin host's configuration for these limits (no cache dir
    /// given: the host's default).
    pub fn host_config(&self) -> orchestrator_policy_host::HostConfig {
        let defaults = orchestrator_policy_host::HostConfig::default();
        orchestrator_policy_host::HostConfig {
            call_timeout: std::time::Duration::from_millis(self.call_timeout_ms.max(1)),
            memory_limit_bytes: self.memory_limit_mib.max(1) * 1024 * 1024,
            cache_dir: self.cache_dir.clone().or(defaults.cache_dir),
        }
    }
}

/// How the model is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The model: a path or a hub name.
    pub model: Option<String>,
    /// The name the API serves it under.
    pub served_model_name: Option<String>,
    /// Bind address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Extra `vllm serve` arguments.
    pub extra_args: Vec<String>,
    /// Tensor-parallel size, if fixed.
    pub tensor_parallel_size: Option<u32>,
    /// Pipeline-parallel size, if fixed.
    pub pipeline_parallel_size: Option<u32>,
    /// Where the probes reach the server (default: 127.0.0.1, or `host`
    /// when it is a specific address).
    pub probe_host: Option<String>,
    /// How often `/health` is probed and the health policy asked, ms.
    pub health_interval_ms: u64,
    /// How often a one-token completion is sent, ms.
    pub generation_interval_ms: u64,
    /// Timeout of a `/health` probe, ms.
    pub health_timeout_ms: u64,
    /// Timeout of a generation probe, ms.
    pub generation_timeout_ms: u64,
    /// Seconds the server gets to drain after SIGTERM before SIGKILL.
    pub stop_grace_seconds: u64,
    /// On a stop request, after `/readyz` turns false: how long requests
    /// already in flight (vLLM's running and waiting counts on its
    /// `/metrics`) may take to finish before the server is stopped, s
    /// (0: stop at once).
    pub drain_timeout_seconds: u64,
    /// The model's files to bring into the page cache on every node while
    /// the cluster forms.
    pub prefetch: PrefetchConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: None,
            served_model_name: None,
            host: "0.0.0.0".to_string(),
            port: 8000,
            extra_args: vec![],
            tensor_parallel_size: None,
            pipeline_parallel_size: None,
            probe_host: None,
            health_interval_ms: 2000,
            generation_interval_ms: 15_000,
            health_timeout_ms: 5000,
            generation_timeout_ms: 60_000,
            stop_grace_seconds: 30,
            drain_timeout_seconds: 30,
            prefetch: PrefetchConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Where the probes reach the server, `HOST:PORT`.
    pub fn probe_address(&self) -> String {
        let host = self.probe_host.clone().unwrap_or_else(|| {
            if self.host == "0.0.0.0" || self.host == "::" {
                "127.0.0.1".to_string()
            } else {
                self.host.clone()
            }
        });
        format!("{host}:{}", self.port)
    }

    /// The serve settings in the policy contract's terms.
    pub fn settings(&self) -> ServeSettings {
        ServeSettings {
            model: self.model.clone().unwrap_or_default(),
            served_model_name: self.served_model_name.clone(),
            host: self.host.clone(),
            port: self.port,
            extra_args: self.extra_args.clone(),
            tensor_parallel_size: self.tensor_parallel_size,
            pipeline_parallel_size: self.pipeline_parallel_size,
            native_group: None,
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
        ] {
            let e = load(text, &[], &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key) && e.contains(" to "), "{text}: {e}");
        }
        // A value in range loads.
        assert!(load("[cluster]\nwait-timeout-seconds = 86400\n", &[], &[]).is_ok());
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
