//! The native backend: vLLM's own multi-node mode, without Ray. Every
//! node runs one rank of `vllm serve` (`--nnodes N --node-rank I
//! --master-addr A --master-port P`; ranks other than 0 `--headless`), and
//! the leader's orchestrator (rank 0) is the rendezvous: the others
//! register with it and keep a heartbeat ([`protocol`], served on the
//! leader's endpoints port by [`Rendezvous`]), the leader's readiness
//! policy decides on the membership it builds, its launch policy gives
//! every rank's argv, and it tells all ranks to start at once; any rank's
//! exit or lost heartbeat reaches its health policy, and a restart is a
//! restart of the whole group. Entry points: [`NativeIdentity::resolve`]
//! (which rank this pod is), [`NativePlan`] and [`NativeBackend`] (run by
//! the one [`crate::lifecycle::Lifecycle`]).

pub mod auth;
mod backend;
mod early;
pub mod leader;
pub mod member;
pub mod protocol;
pub mod rendezvous;

pub use backend::NativeBackend;
pub use leader::{LeaderPlan, run_leader};
pub use member::{MemberPlan, run_member};
pub use rendezvous::{Rendezvous, RendezvousSettings};

use std::time::Duration;

pub use crate::config::{Backend, NativeConfig};

/// Who this node is in the group: resolved from `[native]` and the
/// environment.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeIdentity {
    /// Its rank; 0 is the leader.
    pub rank: u32,
    /// Ranks in the group.
    pub(crate) group_size: u32,
    /// The leader's address (host, no port).
    pub leader_address: String,
    /// This node's address.
    pub(crate) node_address: String,
    /// Where each piece came from, for `plan` and the log.
    pub sources: Vec<String>,
}

/// Why the group cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdentityError {
    /// No rank anywhere.
    #[error(
        "the native backend needs this node's rank: set native.rank, run under a LeaderWorkerSet (LWS_WORKER_INDEX) or a StatefulSet (a host name ending in -<ordinal>)"
    )]
    NoRank,
    /// No group size anywhere.
    #[error(
        "the native backend needs the group size: set native.group-size or run under a LeaderWorkerSet (LWS_GROUP_SIZE)"
    )]
    NoGroupSize,
    /// A variable is set but is no number.
    #[error("{name} is {value:?}, not a whole number")]
    NotANumber {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// The rank does not fit the group.
    #[error(
        "rank {rank} is out of range for a group of {size} nodes (ranks 0 to {last}); check native.rank / LWS_WORKER_INDEX and native.group-size / LWS_GROUP_SIZE"
    )]
    OutOfRange {
        /// The rank.
        rank: u32,
        /// The group size.
        size: u32,
        /// The last rank.
        last: u32,
    },
    /// A group of zero.
    #[error("the group size is 0; count the leader too: a leader alone is 1")]
    EmptyGroup,
    /// A rank other than 0 has no leader to register with.
    #[error(
        "rank {0} needs the leader's address: set native.leader-address or run under a LeaderWorkerSet (LWS_LEADER_ADDRESS)"
    )]
    NoLeader(u32),
}

impl NativeIdentity {
    /// Resolves the identity from `config`, then the environment read by
    /// `env` (`LWS_*`, `HOSTNAME`, `POD_IP`).
    pub fn resolve(
        config: &NativeConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, IdentityError> {
        let mut sources = Vec::new();
        let number = |name: &str| -> Result<Option<u32>, IdentityError> {
            match env(name) {
                None => Ok(None),
                Some(v) => {
                    v.trim()
                        .parse::<u32>()
                        .map(Some)
                        .map_err(|_| IdentityError::NotANumber {
                            name: name.to_string(),
                            value: v,
                        })
                }
            }
        };
        let rank = if let Some(rank) = config.rank {
            sources.push("rank from native.rank".to_string());
            rank
        } else if let Some(rank) = number("LWS_WORKER_INDEX")? {
            sources.push("rank from LWS_WORKER_INDEX".to_string());
            rank
        } else if let Some(rank) = env("HOSTNAME").as_deref().and_then(statefulset_ordinal) {
            sources.push("rank from the StatefulSet ordinal in HOSTNAME".to_string());
            rank
        } else {
            return Err(IdentityError::NoRank);
        };
        let size = if let Some(size) = config.group_size {
            sources.push("group size from native.group-size".to_string());
            size
        } else if let Some(size) = number("LWS_GROUP_SIZE")? {
            sources.push("group size from LWS_GROUP_SIZE".to_string());
            size
        } else {
            return Err(IdentityError::NoGroupSize);
        };
        if size == 0 {
            return Err(IdentityError::EmptyGroup);
        }
        if rank >= size {
            return Err(IdentityError::OutOfRange {
                rank,
                size,
                last: size - 1,
            });
        }
        let node_address = config
            .node_address
            .clone()
            .or_else(|| env("POD_IP"))
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let leader_address = match (config.leader_address.clone(), env("LWS_LEADER_ADDRESS")) {
            (Some(a), _) => {
                sources.push("leader from native.leader-address".to_string());
                a
            }
            (None, Some(a)) if !a.trim().is_empty() => {
                sources.push("leader from LWS_LEADER_ADDRESS".to_string());
                a.trim().to_string()
            }
            _ if rank == 0 => node_address.clone(),
            _ => return Err(IdentityError::NoLeader(rank)),
        };
        Ok(Self {
            rank,
            group_size: size,
            leader_address,
            node_address,
            sources,
        })
    }

    /// The leader (rank 0).
    pub(crate) fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

/// Which side of the group this process runs.
#[derive(Debug, Clone)]
pub enum NativeRole {
    /// Rank 0: the rendezvous, the wait, the API server.
    Leader {
        /// Its plan.
        plan: Box<LeaderPlan>,
        /// Its rendezvous's settings.
        rendezvous: RendezvousSettings,
    },
    /// Another rank.
    Member(MemberPlan),
}

/// Everything a native run needs, computed up front.
#[derive(Debug, Clone)]
pub struct NativePlan {
    /// Leader or another rank.
    pub role: NativeRole,
    /// Ranks run in this same process (`orchestrator local --backend
    /// native`); empty in a pod.
    pub(crate) local_members: Vec<MemberPlan>,
    /// Where `/livez`, `/readyz`, `/status`, `/metrics` (and on the
    /// leader the rendezvous) are served.
    pub endpoints: Option<std::net::SocketAddr>,
    /// The open-file limit for the whole process tree.
    pub open_file_limit: u64,
    /// The model's files to warm while the group forms.
    pub prefetch: crate::prefetch::PrefetchConfig,
    /// The model's files to fetch from an origin (`[serve.weights]`).
    pub weights: Option<crate::weights::WeightsPlan>,
    /// vLLM's compile caches (`[serve.compile-cache]`).
    pub compile_cache: Option<crate::compile_cache::CompileCachePlan>,
    /// This node's own checks (`[node-health]`; off: none). A rank reports
    /// in its heartbeats, the leader follows every rank's report.
    pub node_health: Option<crate::node_health::NodeHealthPlan>,
}

/// `orchestrator local --backend native`: a leader and `workers` ranks in
/// this process, all on `address`.
#[derive(Debug, Clone)]
pub struct LocalGroup {
    /// Ranks besides the leader.
    pub workers: u32,
    /// The address every rank uses (the leader's endpoints are on
    /// 127.0.0.1).
    pub address: std::net::Ipv4Addr,
    /// The leader's endpoints port (the rendezvous).
    pub endpoints_port: u16,
    /// Where torch.distributed meets (0: a free port).
    pub master_port: u16,
    /// Accelerator slots each rank offers (0: enough for the serve
    /// layout, one at least).
    pub gpus_per_node: f64,
    /// Seconds the group may take to form.
    pub timeout: Duration,
    /// The readiness policy's parameters.
    pub readiness_params: Vec<orchestrator_domain::KeyValue>,
    /// What to serve.
    pub serve: Option<crate::serve::ServeSpec>,
    /// Stop once the group is formed.
    pub exit_when_ready: bool,
    /// Files to warm.
    pub prefetch: crate::prefetch::PrefetchConfig,
    /// The model's files to fetch from an origin, once for the process.
    pub weights: crate::config::WeightsConfig,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// After how long without a heartbeat a rank (or the leader) is lost.
    pub(crate) heartbeat_timeout: Duration,
}

impl LocalGroup {
    /// The native group of a local cluster's description: as many ranks
    /// besides the leader as it has workers, on the head's address.
    pub fn of_cluster(
        cluster: crate::lifecycle::LocalCluster,
        heartbeat: Duration,
        heartbeat_timeout: Duration,
    ) -> Self {
        Self {
            workers: cluster.workers,
            address: cluster.head_ip,
            endpoints_port: cluster.endpoints_port,
            master_port: 0,
            gpus_per_node: cluster.gpus_per_node,
            timeout: cluster.timeout,
            readiness_params: cluster.readiness_params,
            serve: cluster.serve,
            exit_when_ready: cluster.exit_when_ready,
            prefetch: cluster.prefetch,
            weights: cluster.weights,
            heartbeat,
            heartbeat_timeout,
        }
    }
}

/// Why a native plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum NativePlanError {
    /// The group cannot be resolved.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The rendezvous needs the endpoints.
    #[error(
        "the native backend's rendezvous is served on the endpoints port, which is 0: set endpoints-port (default 8080)"
    )]
    NoEndpoints,
    /// `endpoints-host` is no IP address.
    #[error("endpoints-host {0:?} is not an IP address")]
    EndpointsHost(String),
    /// No free port for torch.distributed.
    #[error("cannot find a free port for torch.distributed: {0}")]
    NoPort(std::io::Error),
    /// The group secret cannot be used.
    #[error(transparent)]
    Secret(#[from] auth::SecretError),
    /// A group of several nodes without a secret.
    #[error(
        "a native group of {0} nodes needs a group secret: set {secret} (or native.secret-file) to the same secret on every pod (deploy/lws/ creates it from a Secret), or set native.insecure = true to run unauthenticated on a network only the group reaches",
        secret = auth::SECRET_ENV
    )]
    NoSecret(u32),
}

fn leader_node(address: &str, hostname: &str, gpus: f64, cpus: f64) -> orchestrator_domain::Node {
    orchestrator_domain::Node {
        id: rendezvous::node_id(0),
        address: address.to_string(),
        hostname: hostname.to_string(),
        is_head: true,
        alive: true,
        resources: orchestrator_domain::Resources {
            cpu: cpus,
            gpu: gpus,
            ..orchestrator_domain::Resources::default()
        },
        labels: vec![orchestrator_domain::KeyValue::new("rank", "0")],
        ..orchestrator_domain::Node::default()
    }
}

impl LocalGroup {
    /// The GPUs (or slots) each rank offers: as asked, else the server's
    /// world spread over the ranks.
    fn slots_per_rank(&self) -> f64 {
        if self.gpus_per_node > 0.0 {
            return self.gpus_per_node;
        }
        let world = self.serve.as_ref().map_or(1, |s| {
            s.settings.tensor_parallel_size.unwrap_or(1)
                * s.settings.pipeline_parallel_size.unwrap_or(1)
        });
        f64::from(world.div_ceil(self.workers + 1).max(1))
    }
}

/// This node's part in the weights and the compile caches the group
/// shares (the leader seeds; the group's secret signs).
fn shared_caches(
    config: &crate::config::Config,
    identity: &NativeIdentity,
) -> (
    Option<crate::weights::WeightsPlan>,
    Option<crate::compile_cache::CompileCachePlan>,
) {
    let seed = format!("{}:{}", identity.leader_address, config.endpoints_port);
    let me = format!("{}:{}", identity.node_address, config.endpoints_port);
    let secret = crate::config::group_secret(config.native.secret_file.as_deref())
        .ok()
        .flatten()
        .map(|s| s.bytes);
    let leader = identity.is_leader();
    (
        crate::weights::WeightsPlan::new(
            &config.serve.weights,
            leader,
            seed.clone(),
            me.clone(),
            secret.clone(),
        ),
        crate::compile_cache::CompileCachePlan::new(config, leader, seed, me, secret),
    )
}

impl NativePlan {
    /// The plan of `orchestrator run` with `backend = "native"`, for the
    /// node `identity` resolved.
    pub fn from_config(
        config: &crate::config::Config,
        identity: &NativeIdentity,
    ) -> Result<Self, NativePlanError> {
        if config.endpoints_port == 0 {
            return Err(NativePlanError::NoEndpoints);
        }
        let endpoints = format!("{}:{}", config.endpoints_host, config.endpoints_port)
            .parse()
            .map_err(|_| NativePlanError::EndpointsHost(config.endpoints_host.clone()))?;
        let (heartbeat, timeout) = heartbeat_of(&config.native);
        let gpus = gpus_of(&config.native);
        let node_health = crate::node_health::NodeHealthPlan::from_config(
            &config.node_health,
            config.policies.node_health.params(),
        );
        let host = hostname();
        let key = auth::GroupKey::from_env_or_file(config.native.secret_file.as_deref())?;
        if key.is_none() && identity.group_size > 1 && !config.native.insecure {
            return Err(NativePlanError::NoSecret(identity.group_size));
        }
        if key.is_none() && identity.group_size > 1 {
            tracing::warn!(
                "native.insecure = true: the group's rendezvous is not authenticated; anyone who reaches the leader's port can take a rank"
            );
        }
        let role = if identity.is_leader() {
            let group = orchestrator_domain::NativeGroup {
                nodes: identity.group_size,
                master_addr: identity.leader_address.clone(),
                master_port: config.native.master_port,
            };
            let serve = config.serve.has_model().then(|| {
                let mut spec = crate::serve::ServeSpec::of_config(config);
                spec.settings.native_group = Some(group);
                spec
            });
            let mut expected = config.cluster.topology();
            expected.nodes = identity.group_size;
            NativeRole::Leader {
                plan: Box::new(LeaderPlan {
                    group_size: identity.group_size,
                    master_addr: identity.leader_address.clone(),
                    master_port: config.native.master_port,
                    expected,
                    wait_timeout: Duration::from_secs(config.cluster.wait_timeout_seconds),
                    readiness_params: config.policies.readiness.params(),
                    after_ready: if serve.is_some() {
                        crate::lifecycle::AfterReady::Serve
                    } else {
                        crate::lifecycle::AfterReady::Supervise
                    },
                    serve,
                    kubernetes: config.kubernetes.enabled.then(|| config.kubernetes.clone()),
                }),
                rendezvous: RendezvousSettings {
                    group_size: identity.group_size,
                    heartbeat,
                    timeout,
                    leader: leader_node(&identity.node_address, &host, gpus, cpus()),
                    key: key.clone(),
                },
            }
        } else {
            NativeRole::Member(MemberPlan {
                rank: identity.rank,
                group_size: identity.group_size,
                leader: format!("{}:{}", identity.leader_address, config.endpoints_port),
                address: identity.node_address.clone(),
                hostname: host,
                gpus,
                cpus: cpus(),
                heartbeat,
                timeout,
                leader_wait: Duration::from_secs(config.native.leader_wait_seconds),
                stop_grace: Duration::from_secs(config.serve.stop_grace_seconds),
                node_health: node_health.clone(),
                key,
                stall: crate::serve::StallSpec::of(&config.serve),
            })
        };
        let (weights, compile_cache) = shared_caches(config, identity);
        Ok(Self {
            role,
            local_members: Vec::new(),
            endpoints: Some(endpoints),
            open_file_limit: config.open_file_limit,
            prefetch: config.serve.prefetch.clone(),
            weights,
            compile_cache,
            node_health,
        })
    }

    /// The plan of `orchestrator local --backend native`.
    pub fn local(group: &LocalGroup) -> Result<Self, NativePlanError> {
        if group.endpoints_port == 0 {
            return Err(NativePlanError::NoEndpoints);
        }
        let master_port = match group.master_port {
            0 => std::net::TcpListener::bind((group.address, 0))
                .and_then(|l| l.local_addr())
                .map_err(NativePlanError::NoPort)?
                .port(),
            port => port,
        };
        let size = group.workers + 1;
        let gpus = group.slots_per_rank();
        let address = group.address.to_string();
        let host = hostname();
        let cpus = 1.0;
        // One process holds the whole group: a fresh secret each run.
        let key = auth::GroupKey::random();
        let (stop_grace, stall) = group.serve.as_ref().map_or_else(
            || (Duration::from_secs(10), crate::serve::StallSpec::default()),
            |s| (s.stop_grace, s.stall.clone()),
        );
        let members = (1..size)
            .map(|rank| MemberPlan {
                rank,
                group_size: size,
                leader: format!("127.0.0.1:{}", group.endpoints_port),
                address: address.clone(),
                hostname: format!("{host}-rank-{rank}"),
                gpus,
                cpus,
                heartbeat: group.heartbeat,
                timeout: group.heartbeat_timeout,
                leader_wait: group.timeout,
                stop_grace,
                node_health: None,
                key: Some(key.clone()),
                stall: stall.clone(),
            })
            .collect();
        let serve = group.serve.clone().map(|mut spec| {
            spec.settings.native_group = Some(orchestrator_domain::NativeGroup {
                nodes: size,
                master_addr: address.clone(),
                master_port,
            });
            spec
        });
        Ok(Self {
            role: NativeRole::Leader {
                plan: Box::new(LeaderPlan {
                    group_size: size,
                    master_addr: address.clone(),
                    master_port,
                    expected: orchestrator_domain::Topology {
                        nodes: size,
                        ..orchestrator_domain::Topology::default()
                    },
                    wait_timeout: group.timeout,
                    readiness_params: group.readiness_params.clone(),
                    after_ready: match (&serve, group.exit_when_ready) {
                        (_, true) => crate::lifecycle::AfterReady::Exit,
                        (Some(_), false) => crate::lifecycle::AfterReady::Serve,
                        (None, false) => crate::lifecycle::AfterReady::Supervise,
                    },
                    serve,
                    kubernetes: None,
                }),
                rendezvous: RendezvousSettings {
                    group_size: size,
                    heartbeat: group.heartbeat,
                    timeout: group.heartbeat_timeout,
                    leader: leader_node(&address, &host, gpus, cpus),
                    key: Some(key),
                },
            },
            local_members: members,
            endpoints: Some(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                group.endpoints_port,
            ))),
            open_file_limit: 65536,
            prefetch: group.prefetch.clone(),
            weights: crate::weights::WeightsPlan::alone(&group.weights),
            compile_cache: None,
            // Local GPUs are accelerator slots on a machine without GPUs:
            // the count check would fail every rank.
            node_health: crate::node_health::NodeHealthPlan::from_config(
                &crate::config::NodeHealthConfig::default(),
                vec![orchestrator_domain::KeyValue::new(
                    "check-gpu-count",
                    "false",
                )],
            ),
        })
    }
}

/// What `orchestrator plan` prints for the native backend: this node's
/// rank and where it came from, the rendezvous, and (on the leader, with a
/// model) every rank's argv as the launch policy gives it for a group of
/// `group-size` nodes with `native.gpus` each.
pub fn describe(
    config: &crate::config::Config,
    identity: &NativeIdentity,
    launch: Option<&mut orchestrator_policy_host::LaunchPolicy>,
) -> Result<serde_json::Value, orchestrator_policy_host::PluginError> {
    let plan = NativePlan::from_config(config, identity);
    let gpus = gpus_of(&config.native);
    let mut ranks = serde_json::Value::Null;
    if let (
        Ok(NativePlan {
            role: NativeRole::Leader { plan, .. },
            ..
        }),
        Some(launch),
    ) = (&plan, launch)
    {
        ranks = match &plan.serve {
            None => serde_json::json!({"skipped": "serve.model is not set"}),
            Some(spec) => {
                let topology = orchestrator_domain::Topology {
                    nodes: identity.group_size,
                    gpus: gpus * f64::from(identity.group_size),
                    ..orchestrator_domain::Topology::default()
                };
                let mut cluster = crate::lifecycle::shaped_like(&topology, None, None, 0);
                for (i, node) in cluster.nodes.iter_mut().enumerate() {
                    node.id = rendezvous::node_id(i as u32);
                }
                match crate::serve::ask(launch, cluster, spec, &[], None) {
                    Ok(launch) => {
                        let launch = orchestrator_domain::secrets::secrets().redact_plan(&launch);
                        let mut all = vec![serde_json::json!({
                            "rank": 0, "argv": launch.argv, "env": launch.env,
                        })];
                        all.extend(launch.ranks.iter().map(
                            |r| serde_json::json!({"rank": r.rank, "argv": r.argv, "env": r.env}),
                        ));
                        serde_json::json!(all)
                    }
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            }
        };
    }
    Ok(serde_json::json!({
        "backend": "native",
        "rank": identity.rank,
        "role": if identity.is_leader() { "leader" } else { "member" },
        "group-size": identity.group_size,
        "leader-address": identity.leader_address,
        "node-address": identity.node_address,
        "gpus": gpus,
        "from": identity.sources,
        "rendezvous": match &plan {
            Ok(NativePlan { endpoints: Some(e), role: NativeRole::Leader { .. }, .. }) => serde_json::json!({"serves-on": e.to_string()}),
            Ok(NativePlan { role: NativeRole::Member(m), .. }) => serde_json::json!({"registers-with": m.leader}),
            Ok(_) => serde_json::Value::Null,
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        "master": format!("{}:{}", identity.leader_address, config.native.master_port),
        "ranks": ranks,
    }))
}

/// The node's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// GPUs this node offers: configured, else as many as NVML sees (none
/// when it does not load).
pub(crate) fn gpus_of(config: &NativeConfig) -> f64 {
    config.gpus.unwrap_or_else(|| {
        let library = orchestrator_node_probe::gpu::library_path();
        orchestrator_node_probe::gpu::read_once(library.as_deref(), Duration::ZERO)
            .gpus
            .len() as f64
    })
}

/// CPUs this node offers.
pub fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The ordinal at the end of a StatefulSet pod's name (`vllm-3` -> 3).
fn statefulset_ordinal(hostname: &str) -> Option<u32> {
    let (_, ordinal) = hostname.trim().rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse().ok()
}

/// Heartbeat settings as durations.
pub(crate) fn heartbeat_of(config: &NativeConfig) -> (Duration, Duration) {
    (
        Duration::from_millis(config.heartbeat_ms.max(10)),
        Duration::from_millis(config.heartbeat_timeout_ms.max(config.heartbeat_ms * 2)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn lws_environment_gives_rank_size_and_leader() {
        let id = NativeIdentity::resolve(
            &NativeConfig::default(),
            &env(&[
                ("LWS_WORKER_INDEX", "1"),
                ("LWS_GROUP_SIZE", "2"),
                ("LWS_LEADER_ADDRESS", "vllm-0.vllm.default"),
                ("POD_IP", "10.1.2.3"),
            ]),
        )
        .unwrap();
        assert_eq!(id.rank, 1);
        assert_eq!(id.group_size, 2);
        assert_eq!(id.leader_address, "vllm-0.vllm.default");
        assert_eq!(id.node_address, "10.1.2.3");
        assert!(!id.is_leader());
    }

    #[test]
    fn configuration_wins_and_statefulset_ordinals_count() {
        let config = NativeConfig {
            rank: Some(0),
            group_size: Some(3),
            ..NativeConfig::default()
        };
        let id = NativeIdentity::resolve(&config, &env(&[("LWS_WORKER_INDEX", "2")])).unwrap();
        assert!(id.is_leader());
        assert_eq!(id.leader_address, "127.0.0.1");
        let config = NativeConfig {
            group_size: Some(4),
            leader_address: Some("vllm-0.vllm".into()),
            ..NativeConfig::default()
        };
        let id = NativeIdentity::resolve(&config, &env(&[("HOSTNAME", "vllm-3")])).unwrap();
        assert_eq!(id.rank, 3);
        assert_eq!(statefulset_ordinal("vllm-7c9f8-abcde"), None);
    }

    #[test]
    fn bad_ranks_are_refused_with_the_fix() {
        let out = NativeIdentity::resolve(
            &NativeConfig::default(),
            &env(&[("LWS_WORKER_INDEX", "2"), ("LWS_GROUP_SIZE", "2")]),
        )
        .unwrap_err();
        assert_eq!(
            out,
            IdentityError::OutOfRange {
                rank: 2,
                size: 2,
                last: 1
            }
        );
        assert!(out.to_string().contains("LWS_WORKER_INDEX"));
        let garbage = NativeIdentity::resolve(
            &NativeConfig::default(),
            &env(&[("LWS_WORKER_INDEX", "one"), ("LWS_GROUP_SIZE", "2")]),
        )
        .unwrap_err();
        assert!(matches!(garbage, IdentityError::NotANumber { .. }));
        let no_leader = NativeIdentity::resolve(
            &NativeConfig::default(),
            &env(&[("LWS_WORKER_INDEX", "1"), ("LWS_GROUP_SIZE", "2")]),
        )
        .unwrap_err();
        assert_eq!(no_leader, IdentityError::NoLeader(1));
        assert_eq!(
            NativeIdentity::resolve(&NativeConfig::default(), &env(&[])).unwrap_err(),
            IdentityError::NoRank
        );
    }
}
