//! The data every phase and every policy judges by: nodes, snapshots,
//! launch requests and plans, health snapshots and verdicts.
//!
//! Field and case names in serde are exactly the WIT's (kebab-case), so the
//! JSON that `orchestrator plugin run` reads and prints uses the names of
//! `wit/policy-0.1.0/types.wit`, where every item is documented. The policy
//! host converts these to and from its WIT bindings.
#![allow(missing_docs)] // Each item is documented in the WIT; see wit/policy-0.1.0/types.wit.

use serde::{Deserialize, Serialize};

/// A key and its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    /// A pair from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }

    /// `KEY=VALUE` (a key that is not empty), as flags write it.
    pub fn parse(text: &str) -> Option<Self> {
        let (key, value) = text.split_once('=')?;
        (!key.is_empty()).then(|| Self::new(key, value))
    }
}

/// An amount of a custom Ray resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResourceAmount {
    pub name: String,
    pub amount: f64,
}

/// What a node offers in total.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Resources {
    pub cpu: f64,
    pub gpu: f64,
    pub memory_bytes: u64,
    pub object_store_memory_bytes: u64,
    pub custom: Vec<ResourceAmount>,
}

/// One Ray node as the GCS knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub hostname: String,
    pub is_head: bool,
    pub alive: bool,
    pub resources: Resources,
    pub labels: Vec<KeyValue>,
    pub start_time_ms: u64,
    /// The node's own health check, as the head last heard it.
    #[serde(default, skip_serializing_if = "crate::NodeHealth::is_unknown")]
    pub health: crate::NodeHealth,
}

/// The expected shape of one group of nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeGroup {
    pub name: String,
    pub replicas: u32,
    pub cpus_per_node: f64,
    pub gpus_per_node: f64,
}

/// The cluster the user asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Topology {
    pub nodes: u32,
    pub gpus: f64,
    pub min_gpus_per_node: f64,
    pub groups: Vec<NodeGroup>,
}

/// Everything a readiness or launch policy may judge the cluster by.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterSnapshot {
    pub nodes: Vec<Node>,
    pub expected: Topology,
    pub elapsed_ms: u64,
    pub deadline_ms: u64,
    pub diagnostics: Vec<String>,
}

/// A readiness policy's verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    Ready,
    Wait(String),
    Fail(String),
}

/// How the user asked the model to be served.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeSettings {
    pub model: String,
    pub served_model_name: Option<String>,
    pub host: String,
    pub port: u16,
    pub extra_args: Vec<String>,
    pub tensor_parallel_size: Option<u32>,
    pub pipeline_parallel_size: Option<u32>,
    /// The native backend's group (vLLM's own multi-node mode); `None`
    /// with Ray.
    pub native_group: Option<NativeGroup>,
}

/// The group of a natively launched server: one rank per node, rank 0 on
/// the leader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NativeGroup {
    /// Ranks in the group, the leader included.
    pub nodes: u32,
    /// The leader's address, where torch.distributed meets.
    pub master_addr: String,
    /// The port it meets on.
    pub master_port: u16,
}

/// What one rank other than the leader runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RankPlan {
    /// Its node rank, 1 to nodes - 1.
    pub rank: u32,
    /// The full argv.
    pub argv: Vec<String>,
    /// Environment added on that node.
    #[serde(default)]
    pub env: Vec<KeyValue>,
}

/// The input of a launch policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LaunchRequest {
    pub cluster: ClusterSnapshot,
    pub settings: ServeSettings,
}

/// How to start the serving process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LaunchPlan {
    pub argv: Vec<String>,
    pub env: Vec<KeyValue>,
    #[serde(default)]
    pub early: bool,
    /// With a native group: ranks 1 to nodes - 1 (`argv`/`env` are rank
    /// 0's).
    #[serde(default)]
    pub ranks: Vec<RankPlan>,
}

/// How a launch plan's ranks do not fit the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankMismatch {
    /// Per-rank plans for a backend without a native group.
    #[error("the plan has {0} per-rank argv but the backend is Ray (no native group)")]
    RanksWithoutGroup(usize),
    /// Not exactly ranks 1 to nodes - 1.
    #[error(
        "the plan's ranks are {got:?} but a group of {nodes} nodes needs exactly ranks {want:?}"
    )]
    WrongRanks {
        /// The ranks planned.
        got: Vec<u32>,
        /// The ranks needed.
        want: Vec<u32>,
        /// The group's size.
        nodes: u32,
    },
    /// A rank without a program.
    #[error("rank {0}'s argv is empty")]
    EmptyArgv(u32),
}

impl LaunchPlan {
    /// Checks a native group's plan: one entry per rank 1 to nodes - 1,
    /// each with a program. Names the first problem.
    pub fn check_ranks(&self, group: Option<&NativeGroup>) -> Result<(), RankMismatch> {
        let Some(group) = group else {
            if self.ranks.is_empty() {
                return Ok(());
            }
            return Err(RankMismatch::RanksWithoutGroup(self.ranks.len()));
        };
        let want: Vec<u32> = (1..group.nodes).collect();
        let mut got: Vec<u32> = self.ranks.iter().map(|r| r.rank).collect();
        got.sort_unstable();
        if got != want {
            return Err(RankMismatch::WrongRanks {
                got,
                want,
                nodes: group.nodes,
            });
        }
        if let Some(r) = self.ranks.iter().find(|r| r.argv.is_empty()) {
            return Err(RankMismatch::EmptyArgv(r.rank));
        }
        Ok(())
    }

    /// The argv of `rank` (0: the leader's).
    pub fn argv_of(&self, rank: u32) -> Option<&[String]> {
        if rank == 0 {
            return Some(&self.argv);
        }
        self.ranks
            .iter()
            .find(|r| r.rank == rank)
            .map(|r| r.argv.as_slice())
    }
}

/// Why a launch policy could not build a plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchError {
    ImpossibleLayout(String),
    InvalidSettings(String),
    Other(String),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ImpossibleLayout(m) => write!(f, "impossible layout: {m}"),
            Self::InvalidSettings(m) => write!(f, "invalid serve settings: {m}"),
            Self::Other(m) => write!(f, "{m}"),
        }
    }
}

/// How the serving process ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The serving process as the host sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerState {
    #[default]
    Starting,
    Running,
    Exited(ExitStatus),
}

/// The result of one probe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProbeResult {
    pub ok: bool,
    pub status_code: Option<u16>,
    pub latency_ms: u32,
    pub error: Option<String>,
    pub age_ms: u64,
}

/// The kind of a membership change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NodeChangeKind {
    Joined,
    Died,
}

/// A membership change since the previous health evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeChange {
    pub node_id: String,
    pub kind: NodeChangeKind,
}

/// Everything a health policy may judge the service by.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthSnapshot {
    pub server: ServerState,
    pub server_uptime_ms: u64,
    pub health_probe: Option<ProbeResult>,
    pub generation_probe: Option<ProbeResult>,
    pub consecutive_probe_failures: u32,
    pub nodes: Vec<Node>,
    pub server_nodes: Vec<String>,
    pub changes: Vec<NodeChange>,
    pub restarts: u32,
    pub uptime_ms: u64,
    /// Each rank's stage in the current start (contract 0.3.0 and later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::RankStage>,
    /// The current start's stall, when a rank overran its stage's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<crate::Stall>,
    /// The last start that ended in an exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<crate::StartupFailure>,
}

/// Restart the serving process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RestartAction {
    pub reason: String,
    pub backoff_ms: u32,
}

/// Stop serving and end the orchestrator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ShutdownAction {
    pub exit_code: i32,
    pub reason: String,
}

/// A health policy's verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HealthVerdict {
    Healthy,
    Degraded(String),
    Restart(RestartAction),
    Shutdown(ShutdownAction),
}

/// The kind of a health verdict, without its payload: what metrics, logs
/// and `/status` name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    Healthy,
    Degraded,
    Restart,
    Shutdown,
    /// The health policy itself failed (trap, timeout): not a verdict of
    /// the policy, but what the host records in its place.
    PolicyFailed,
}

impl VerdictKind {
    /// The kebab-case name (`healthy`, `policy-failed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Restart => "restart",
            Self::Shutdown => "shutdown",
            Self::PolicyFailed => "policy-failed",
        }
    }
}

impl std::fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl HealthVerdict {
    /// The verdict's kind.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Self::Healthy => VerdictKind::Healthy,
            Self::Degraded(_) => VerdictKind::Degraded,
            Self::Restart(_) => VerdictKind::Restart,
            Self::Shutdown(_) => VerdictKind::Shutdown,
        }
    }
}

impl Node {
    /// The first 8 characters of the node id, for logs.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }
}
