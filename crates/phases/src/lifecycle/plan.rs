//! What a lifecycle will do, computed before anything runs: from a
//! configuration ([`Plan::from_config`], what `orchestrator run` does) or
//! for a local cluster ([`Plan::local`]). [`describe`] is what
//! `orchestrator plan` prints.

use crate::config::Config;
use crate::membership::{MembershipSource, RayGcs};
use crate::policies::Policies;
use crate::serve::ServeSpec;
use crate::start::{NodeLaunch, RayStart, RayStartError, StartPlan};
use orchestrator_domain::{
    ClusterConfig, ClusterSnapshot, KeyValue, Node, Resources, Role, Topology,
};
use orchestrator_kubernetes::KubernetesConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A worker's first step: the cluster it joins (the head's GCS) must
/// answer before its node starts.
#[derive(Debug, Clone)]
pub struct Join {
    /// The cluster's membership source.
    pub cluster: Arc<dyn MembershipSource>,
    /// How long it may take to answer.
    pub timeout: Duration,
}

/// What the head's wait phase waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitPlan {
    /// The expected topology (a platform may replace it while waiting).
    pub expected: Topology,
    /// How long the wait may take.
    pub timeout: Duration,
    /// The readiness policy's parameters.
    pub params: Vec<KeyValue>,
    /// Ask Ray's autoscaler for the expected workers while waiting.
    pub request_resources: bool,
}

/// What the head does once the cluster is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReady {
    /// Launch and supervise the serving process.
    Serve,
    /// Keep Ray running until stopped (nothing to serve).
    Supervise,
    /// Stop everything (`local --exit-when-ready`).
    Exit,
}

/// Everything a lifecycle needs, computed and checked up front.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Head or worker.
    pub role: Role,
    /// The Ray nodes to start.
    pub start: StartPlan,
    /// Workers: the head's GCS to wait for first.
    pub join: Option<Join>,
    /// Where membership comes from (the head's GCS).
    pub membership: Arc<dyn MembershipSource>,
    /// Head: the wait phase.
    pub wait: Option<WaitPlan>,
    /// Head: what to serve.
    pub serve: Option<ServeSpec>,
    /// Head: what follows the ready decision.
    pub(crate) after_ready: AfterReady,
    /// Where `/livez`, `/readyz`, `/status` and `/metrics` are served.
    pub endpoints: Option<SocketAddr>,
    /// The open-file limit for the whole process tree.
    pub open_file_limit: u64,
    /// Head with Kubernetes awareness: its settings and the configured
    /// cluster (whose explicit fields win over the RayCluster's).
    pub kubernetes: Option<(KubernetesConfig, ClusterConfig)>,
    /// Between SIGTERM and SIGKILL for Ray's process groups.
    pub stop_grace: Duration,
    /// Every node's own health checks (off: none).
    pub node_health: Option<crate::node_health::NodeHealthPlan>,
    /// The model's files to warm while the cluster forms.
    pub prefetch: crate::prefetch::PrefetchConfig,
    /// The model's files to fetch from an origin (`[serve.weights]`).
    pub weights: Option<crate::weights::WeightsPlan>,
    /// vLLM's compile caches (`[serve.compile-cache]`).
    pub compile_cache: Option<crate::compile_cache::CompileCachePlan>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The `ray start` command cannot be built.
    #[error(transparent)]
    RayStart(#[from] RayStartError),
    /// A worker needs the head's address.
    #[error("the worker's ray start command has no --address: set ray.gcs-address")]
    NoJoinAddress,
    /// `endpoints-host` is no IP address.
    #[error("endpoints-host {0:?} is not an IP address")]
    EndpointsHost(String),
    /// The local cluster cannot be laid out.
    #[error(transparent)]
    Local(super::local::LocalError),
}

/// The head's GCS address: configured, or this node's IP and the GCS port.
pub fn head_gcs_address(config: &Config) -> String {
    config.ray.gcs_address.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            config.ray.node_ip.as_deref().unwrap_or("127.0.0.1"),
            config.ray.gcs_port
        )
    })
}

impl Plan {
    /// The plan of `orchestrator run`; `kuberay` is
    /// `KUBERAY_GEN_RAY_START_CMD`, if set.
    pub fn from_config(config: &Config, kuberay: Option<&str>) -> Result<Self, PlanError> {
        let start = RayStart::for_config(config, kuberay)?;
        let join = match config.role {
            Role::Head => None,
            Role::Worker => Some(Join {
                cluster: Arc::new(RayGcs::new(
                    start.join_address().ok_or(PlanError::NoJoinAddress)?,
                )),
                timeout: Duration::from_secs(config.ray.gcs_wait_seconds),
            }),
        };
        let endpoints = match config.endpoints_port {
            0 => None,
            port => Some(
                format!("{}:{port}", config.endpoints_host)
                    .parse()
                    .map_err(|_| PlanError::EndpointsHost(config.endpoints_host.clone()))?,
            ),
        };
        let head = config.role == Role::Head;
        // The seed's orchestrator answers on the head's address, each on
        // the endpoints port (the same on every node of a group).
        let port = config.endpoints_port;
        let seed_host = start
            .join_address()
            .and_then(|a| a.rsplit_once(':'))
            .map(|(host, _)| host.to_string())
            .unwrap_or_default();
        let me_host = config
            .ray
            .node_ip
            .clone()
            .unwrap_or_else(|| config.endpoints_host.clone());
        let secret = crate::weights::ray_group_secret(config.native.secret_file.as_deref());
        let weights = crate::weights::WeightsPlan::new(
            &config.serve.weights,
            head,
            format!("{seed_host}:{port}"),
            format!("{me_host}:{port}"),
            secret.clone(),
        );
        let compile_cache = crate::compile_cache::CompileCachePlan::new(
            config,
            head,
            format!("{seed_host}:{port}"),
            format!("{me_host}:{port}"),
            secret,
        );
        let serve = (head && config.serve.has_model()).then(|| ServeSpec::of_config(config));
        Ok(Self {
            role: config.role,
            start: StartPlan {
                nodes: vec![NodeLaunch {
                    label: config.role.name().to_string(),
                    argv: start.argv(),
                }],
                env: ray_env(config),
                stagger: Duration::ZERO,
                timeout: Duration::from_secs(300),
                record: Some(record_spec(config)),
            },
            join,
            membership: Arc::new(RayGcs::new(head_gcs_address(config))),
            wait: head.then(|| WaitPlan {
                expected: config.cluster.topology(),
                timeout: Duration::from_secs(config.cluster.wait_timeout_seconds),
                params: config.policies.readiness.params(),
                request_resources: config.cluster.request_resources,
            }),
            after_ready: if serve.is_some() {
                AfterReady::Serve
            } else {
                AfterReady::Supervise
            },
            serve,
            endpoints,
            open_file_limit: config.open_file_limit,
            kubernetes: (head && config.kubernetes.enabled)
                .then(|| (config.kubernetes.clone(), config.cluster.clone())),
            stop_grace: Duration::from_secs(config.ray.stop_grace_seconds),
            node_health: crate::node_health::NodeHealthPlan::from_config(
                &config.node_health,
                config.policies.node_health.params(),
            ),
            prefetch: config.serve.prefetch.clone(),
            weights,
            compile_cache,
        })
    }
}

/// Where this node is recorded for the next orchestrator on the machine:
/// Ray's temp dir, named by role, node address and the head's GCS port
/// (head) or the endpoints port (worker), which one host cannot share.
fn record_spec(config: &Config) -> crate::start::RecordSpec {
    let temp_dir = config
        .ray
        .temp_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp/ray"));
    let port = match config.role {
        Role::Head => config.ray.gcs_port,
        Role::Worker => config.endpoints_port,
    };
    crate::start::RecordSpec {
        path: crate::start::leftover::record_path(
            &temp_dir,
            config.role.name(),
            config.ray.node_ip.as_deref().unwrap_or("default"),
            port,
        ),
        temp_dir,
        grace: Duration::from_secs(config.ray.stop_grace_seconds),
        gcs_address: (config.role == Role::Head).then(|| head_gcs_address(config)),
    }
}

/// The environment of Ray's processes: what GCS fault tolerance needs,
/// then `ray.env` (which wins).
fn ray_env(config: &Config) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = config
        .ray
        .gcs_fault_tolerance
        .as_ref()
        .map(|ft| ft.env(config.role))
        .unwrap_or_default();
    env.retain(|(k, _)| !config.ray.env.contains_key(k));
    env.extend(config.ray.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Each loaded policy: its plugin, digest and parameters.
fn described_policies(config: &Config, p: &Policies) -> serde_json::Map<String, serde_json::Value> {
    let entry = |name: &str, sha256: &str, params: &std::collections::BTreeMap<String, String>| serde_json::json!({"plugin": name, "sha256": sha256, "params": params});
    let c = &config.policies;
    let mut described = serde_json::Map::new();
    described.insert(
        "readiness".into(),
        entry(
            p.readiness.name(),
            &p.readiness.info().sha256,
            &c.readiness.params,
        ),
    );
    described.insert(
        "launch".into(),
        entry(p.launch.name(), &p.launch.info().sha256, &c.launch.params),
    );
    described.insert(
        "health".into(),
        entry(p.health.name(), &p.health.info().sha256, &c.health.params),
    );
    described
}

/// What `orchestrator plan` prints: the start argv and env, the wait, the
/// policies chosen, and the serve argv the launch policy gives for
/// `topology` (the expected one). Workers load no policies.
pub fn describe(
    config: &Config,
    topology: &Topology,
    kuberay: Option<&str>,
    policies: Option<&mut Policies>,
) -> Result<serde_json::Value, DescribeError> {
    let start = RayStart::for_config(config, kuberay)?;
    let mut described = serde_json::Map::new();
    let mut serve = match (config.role, &config.serve.model) {
        (Role::Head, None) => serde_json::json!({"skipped": "serve.model is not set"}),
        (Role::Head, Some(_)) => serde_json::Value::Null,
        (Role::Worker, _) => serde_json::json!({"skipped": "workers do not serve"}),
    };
    if let Some(p) = policies {
        described = described_policies(config, p);
        if serve.is_null() {
            let spec = ServeSpec::of_config(config);
            let cluster = expected_cluster(config, topology);
            serve = match crate::serve::ask(&mut p.launch, cluster, &spec, &[], None) {
                Ok(plan) => {
                    let plan = orchestrator_domain::secrets::secrets().redact_plan(&plan);
                    serde_json::json!({"argv": plan.argv, "env": plan.env, "early": plan.early, "for": "the expected topology"})
                }
                Err(crate::serve::NoPlan::Failed(e)) => return Err(DescribeError::Launch(e)),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
        }
    }
    Ok(serde_json::json!({
        "role": config.role,
        "open-file-limit": config.open_file_limit,
        "start": {
            "argv": start.argv_redacted(),
            "env": ray_env(config)
                .into_iter()
                .map(|(k, v)| {
                    let secret = orchestrator_domain::secrets::secrets().is_secret_name(&k);
                    (k, if secret { orchestrator_domain::secrets::REDACTED.to_string() } else { v })
                })
                .collect::<std::collections::BTreeMap<_, _>>(),
            "from-kuberay-command": config.ray.use_kuberay_command,
        },
        "wait": match config.role {
            Role::Head => serde_json::json!({
                "gcs-address": head_gcs_address(config),
                "expected": topology,
                "timeout-seconds": config.cluster.wait_timeout_seconds,
            }),
            Role::Worker => serde_json::json!({
                "head-gcs": start.join_address(),
                "gcs-wait-seconds": config.ray.gcs_wait_seconds,
            }),
        },
        "policies": described,
        "node-health": if config.node_health.enabled {
            let (policy, default) = config.policies.for_world(orchestrator_policy_host::World::NodeHealth);
            serde_json::json!({
                "enabled": true,
                "policy": match policy.policy(default) {
                    crate::policies::PolicyRef::Builtin(name) => format!("builtin:{name}"),
                    crate::policies::PolicyRef::File { path, .. } => path.display().to_string(),
                    crate::policies::PolicyRef::Oci(reference)
                    | crate::policies::PolicyRef::Pulled { reference, .. } => reference,
                },
                "params": policy.params,
                "interval-ms": config.node_health.interval_ms,
                "stale-after-ms": config.node_health.stale_after_ms,
                "unhealthy-grace-seconds": config.node_health.unhealthy_grace_seconds,
                "publishes-to": format!("the GCS key-value store, namespace {}", crate::membership::KV_NAMESPACE),
            })
        } else {
            serde_json::json!({"enabled": false})
        },
        "serve": serve,
        "kubernetes": if config.kubernetes.enabled && config.role == Role::Head {
            serde_json::json!({
                "enabled": true,
                "api-server": config.kubernetes.api_server.as_deref().unwrap_or("in-cluster service account"),
                "raycluster": config.kubernetes.cluster_name.as_deref().unwrap_or("this pod's ray.io/cluster label"),
                "expected": "from the RayCluster at run time; fields set under [cluster] win",
                "events": config.kubernetes.events,
            })
        } else {
            serde_json::json!({"enabled": false})
        },
    }))
}

/// Why `orchestrator plan` cannot describe a plan.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// The `ray start` command cannot be built.
    #[error(transparent)]
    RayStart(#[from] RayStartError),
    /// The launch policy failed on the expected cluster.
    #[error("the launch policy failed: {0}")]
    Launch(String),
}

/// A cluster shaped like the expected topology, for `plan`.
fn expected_cluster(config: &Config, topology: &Topology) -> ClusterSnapshot {
    shaped_like(
        topology,
        config.ray.num_gpus,
        config.ray.num_cpus,
        config.cluster.wait_timeout_seconds * 1000,
    )
}

/// A cluster of alive nodes shaped like `topology`: what `plan` shows and
/// what an early launch is planned for. The head offers `head_gpus`
/// (default: the GPUs the topology counts beyond its groups).
pub(crate) fn shaped_like(
    topology: &Topology,
    head_gpus: Option<f64>,
    head_cpus: Option<f64>,
    deadline_ms: u64,
) -> ClusterSnapshot {
    let mut nodes = vec![];
    let mut add = |gpu: f64, cpu: f64, head: bool| {
        let i = nodes.len();
        nodes.push(Node {
            id: format!("{:056x}", i + 1),
            address: format!("node-{i}"),
            hostname: format!("node-{i}"),
            is_head: head,
            alive: true,
            resources: Resources {
                cpu,
                gpu,
                ..Resources::default()
            },
            ..Node::default()
        });
    };
    if topology.groups.is_empty() {
        let per_node = if topology.nodes > 0 {
            topology.gpus / f64::from(topology.nodes)
        } else {
            0.0
        };
        for i in 0..topology.nodes {
            add(per_node.max(topology.min_gpus_per_node), 1.0, i == 0);
        }
    } else {
        // The head offers what the configuration says, else the GPUs the
        // topology counts beyond the groups'.
        let in_groups: f64 = topology
            .groups
            .iter()
            .map(|g| f64::from(g.replicas) * g.gpus_per_node)
            .sum();
        add(
            head_gpus.unwrap_or((topology.gpus - in_groups).max(0.0)),
            head_cpus.unwrap_or(1.0),
            true,
        );
        for g in &topology.groups {
            for _ in 0..g.replicas {
                add(g.gpus_per_node, g.cpus_per_node, false);
            }
        }
    }
    ClusterSnapshot {
        nodes,
        expected: topology.clone(),
        elapsed_ms: 0,
        deadline_ms,
        diagnostics: vec![],
    }
}
