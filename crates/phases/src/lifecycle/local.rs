//! A whole cluster on one machine (`orchestrator local`): a head on
//! 127.0.0.2 and N workers on the next addresses, each a real Ray node
//! with its own ports, sharing one temp dir. Entry point: [`Plan::local`].

use super::plan::{AfterReady, Plan, PlanError, WaitPlan};
use crate::membership::RayGcs;
use crate::serve::ServeSpec;
use crate::start::{NodeLaunch, RayStart, StartPlan};
use orchestrator_domain::{KeyValue, Role, Topology};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The local cluster to run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCluster {
    /// Worker nodes besides the head.
    pub workers: u32,
    /// Ray's `ray` executable.
    pub ray_bin: PathBuf,
    /// The head's address; workers take the next ones.
    pub head_ip: Ipv4Addr,
    /// The GCS port.
    pub gcs_port: u16,
    /// First dashboard-agent port; node i uses this + i.
    pub agent_port: u16,
    /// First metrics-export port; node i uses this + i.
    pub metrics_port: u16,
    /// CPUs each node offers.
    pub cpus_per_node: f64,
    /// GPUs (slots) each node offers.
    pub gpus_per_node: f64,
    /// Memory each node offers to tasks, MiB.
    pub memory_mib: u64,
    /// Object-store memory of each node, MiB.
    pub object_store_mib: u64,
    /// Ray's temp dir (default: `/tmp/ray-local-<gcs port>`).
    pub temp_dir: Option<PathBuf>,
    /// How long the cluster may take to form.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL for Ray's processes.
    pub grace: Duration,
    /// How long each worker's start is held back.
    pub worker_delay: Duration,
    /// Environment added for Ray's processes.
    pub ray_env: Vec<KeyValue>,
    /// The readiness policy's parameters.
    pub readiness_params: Vec<KeyValue>,
    /// What to do once ready: serve this, or (None) supervise or exit.
    pub serve: Option<ServeSpec>,
    /// Stop as soon as the cluster is ready (when nothing is served).
    pub exit_when_ready: bool,
    /// Port of the endpoints on 127.0.0.1 (0: off).
    pub endpoints_port: u16,
    /// The model's files to warm while the cluster forms.
    pub prefetch: crate::prefetch::PrefetchConfig,
    /// The model's files to fetch from an origin, once for the process.
    pub weights: crate::config::WeightsConfig,
}

/// Environment for local Ray processes: faster death detection by the GCS
/// (a killed node is marked dead in ~2 s instead of ~30 s), no usage stats.
pub fn local_ray_env() -> Vec<(String, String)> {
    [
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_health_check_initial_delay_ms", "1000"),
        ("RAY_health_check_period_ms", "500"),
        ("RAY_health_check_timeout_ms", "500"),
        ("RAY_health_check_failure_threshold", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Why a local cluster cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A node's address would leave 127.0.0.2 and up.
    #[error("node {index} would get address {ip}; use --head-ip in 127.0.0.2 and up")]
    Address {
        /// The node.
        index: u32,
        /// Its address.
        ip: String,
    },
    /// Ports would overflow.
    #[error("too many workers for the port ranges")]
    TooMany,
}

impl LocalCluster {
    fn temp_dir(&self) -> PathBuf {
        self.temp_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/ray-local-{}", self.gcs_port)))
    }

    fn node(&self, index: u32) -> Result<NodeLaunch, LocalError> {
        let ip = u32::from(self.head_ip)
            .checked_add(index)
            .map(Ipv4Addr::from)
            .ok_or(LocalError::TooMany)?;
        if ip.octets()[0] != 127 || ip == Ipv4Addr::new(127, 0, 0, 1) {
            return Err(LocalError::Address {
                index,
                ip: ip.to_string(),
            });
        }
        let offset = u16::try_from(index).map_err(|_| LocalError::TooMany)?;
        let port = |base: u16| base.checked_add(offset).ok_or(LocalError::TooMany);
        let mut cmd = RayStart {
            program: self.ray_bin.clone(),
            args: vec![],
        };
        let head = index == 0;
        if head {
            cmd.flag("head");
            cmd.set("port", self.gcs_port.to_string());
            cmd.set("temp-dir", self.temp_dir().display().to_string());
        } else {
            cmd.set("address", format!("{}:{}", self.head_ip, self.gcs_port));
        }
        cmd.set("node-ip-address", ip.to_string());
        cmd.set("num-cpus", self.cpus_per_node.to_string());
        cmd.set("num-gpus", self.gpus_per_node.to_string());
        cmd.set("memory", (self.memory_mib * 1024 * 1024).to_string());
        cmd.set(
            "object-store-memory",
            (self.object_store_mib * 1024 * 1024).to_string(),
        );
        cmd.set(
            "dashboard-agent-listen-port",
            port(self.agent_port)?.to_string(),
        );
        cmd.set("metrics-export-port", port(self.metrics_port)?.to_string());
        cmd.flag("disable-usage-stats");
        Ok(NodeLaunch {
            label: if head {
                "head".to_string()
            } else {
                format!("worker-{index}")
            },
            argv: cmd.argv(),
        })
    }
}

impl Plan {
    /// The plan of `orchestrator local`.
    pub fn local(cluster: &LocalCluster) -> Result<Self, PlanError> {
        let nodes = (0..=cluster.workers)
            .map(|i| cluster.node(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = local_ray_env();
        env.extend(
            cluster
                .ray_env
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone())),
        );
        let total = cluster.workers + 1;
        Ok(Self {
            role: Role::Head,
            start: StartPlan {
                nodes,
                env,
                stagger: cluster.worker_delay,
                timeout: Duration::from_secs(120),
                record: None,
            },
            join: None,
            membership: Arc::new(RayGcs::new(format!(
                "{}:{}",
                cluster.head_ip, cluster.gcs_port
            ))),
            wait: Some(WaitPlan {
                expected: Topology {
                    nodes: total,
                    gpus: cluster.gpus_per_node * f64::from(total),
                    min_gpus_per_node: 0.0,
                    groups: vec![],
                },
                timeout: cluster.timeout,
                params: cluster.readiness_params.clone(),
                request_resources: false,
            }),
            after_ready: match (&cluster.serve, cluster.exit_when_ready) {
                (Some(_), _) => AfterReady::Serve,
                (None, true) => AfterReady::Exit,
                (None, false) => AfterReady::Supervise,
            },
            serve: cluster.serve.clone(),
            endpoints: (cluster.endpoints_port != 0)
                .then(|| SocketAddr::from(([127, 0, 0, 1], cluster.endpoints_port))),
            open_file_limit: 65536,
            kubernetes: None,
            stop_grace: cluster.grace,
            // Local GPUs are Ray resource slots on a machine without
            // GPUs: the count check would fail every node.
            node_health: crate::node_health::NodeHealthPlan::from_config(
                &crate::config::NodeHealthConfig::default(),
                vec![KeyValue::new("check-gpu-count", "false")],
            ),
            prefetch: cluster.prefetch.clone(),
            weights: crate::weights::WeightsPlan::alone(&cluster.weights),
            compile_cache: None,
        })
    }
}

impl From<LocalError> for PlanError {
    fn from(e: LocalError) -> Self {
        PlanError::Local(e)
    }
}
