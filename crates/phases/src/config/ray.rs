//! `[ray]`: how Ray is started on this node, and GCS fault tolerance.
//! Entry point: [`RayConfig`].

use orchestrator_domain::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    pub(crate) dashboard_port: Option<u16>,
    /// Dashboard bind address on the head (`--dashboard-host`).
    pub(crate) dashboard_host: Option<String>,
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
