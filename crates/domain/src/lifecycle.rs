//! The orchestrator's lifecycle as values: a pod's [`Role`], the
//! [`Phase`] it is in, and the [`Event`]s a platform records (Kubernetes
//! Events on the pod), each with a typed [`EventReason`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// What this pod is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the Ray head (GCS), waits for the cluster and serves.
    #[default]
    Head,
    /// Joins the head's cluster and keeps its Ray node running.
    Worker,
}

impl Role {
    /// `head` or `worker`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The phase the orchestrator is in; phases only move forward, except
/// that any phase may end in [`Phase::Stopping`] or [`Phase::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Raising limits, starting Ray.
    #[default]
    Start,
    /// Waiting for the cluster (workers: for the head's GCS).
    Wait,
    /// Serving (or, with nothing to serve, supervising Ray).
    Serve,
    /// Stopping what was started, after a stop request or a shutdown.
    Stopping,
    /// Ended by a failure.
    Failed,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Start,
        Phase::Wait,
        Phase::Serve,
        Phase::Stopping,
        Phase::Failed,
    ];

    /// The kebab-case name, as `/status` and the metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Wait => "wait",
            Self::Serve => "serve",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Normal or Warning, as Kubernetes Events have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// Progress.
    Normal,
    /// A failure, a restart, a degraded service.
    Warning,
}

/// Why an [`Event`] was published: the Kubernetes Event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventReason {
    /// The start phase began.
    StartingRay,
    /// The wait phase began.
    WaitingForCluster,
    /// The serve phase began.
    Serving,
    /// A stop began.
    Stopping,
    /// The wait ended without a ready cluster.
    ClusterNotReady,
    /// The health policy said healthy (after another verdict).
    ServerHealthy,
    /// The health policy said degraded.
    ServerDegraded,
    /// The health policy said restart.
    ServerRestarting,
    /// The serving process was restarted.
    ServerRestarted,
    /// The health policy said shut down.
    ShuttingDown,
    /// The health policy itself failed; serving goes on.
    HealthPolicyFailed,
    /// One of Ray's daemons exited on its own.
    RayExited,
    /// The launch policy refused the layout.
    LaunchRefused,
    /// A policy failed (trap, timeout, memory).
    PolicyFailed,
    /// A node's own health check said unhealthy.
    NodeUnhealthy,
    /// A node's health reports stopped arriving.
    NodeHealthStale,
    /// The head's GCS answers as a new cluster (the head restarted without
    /// GCS fault tolerance): this worker restarts its Ray node into it.
    RejoiningCluster,
    /// A node-health entry was ignored: forged, misfiled, oversized or
    /// malformed.
    NodeHealthReportRejected,
    /// A serving process exited before it served (rank, stage, cause).
    StartupFailed,
    /// A rank stayed in a start stage past its deadline (rank, stage, its
    /// innermost frames, where its stacks were written).
    StartupStalled,
    /// The gang preflight passed (backend, how long, the slowest link).
    PreflightPassed,
    /// The gang preflight failed: the nodes named, with what they saw.
    PreflightFailed,
}

impl EventReason {
    /// The CamelCase reason, as Kubernetes shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::StartingRay => "StartingRay",
            Self::WaitingForCluster => "WaitingForCluster",
            Self::Serving => "Serving",
            Self::Stopping => "Stopping",
            Self::ClusterNotReady => "ClusterNotReady",
            Self::ServerHealthy => "ServerHealthy",
            Self::ServerDegraded => "ServerDegraded",
            Self::ServerRestarting => "ServerRestarting",
            Self::ServerRestarted => "ServerRestarted",
            Self::ShuttingDown => "ShuttingDown",
            Self::HealthPolicyFailed => "HealthPolicyFailed",
            Self::RayExited => "RayExited",
            Self::LaunchRefused => "LaunchRefused",
            Self::PolicyFailed => "PolicyFailed",
            Self::NodeUnhealthy => "NodeUnhealthy",
            Self::NodeHealthStale => "NodeHealthStale",
            Self::RejoiningCluster => "RejoiningCluster",
            Self::NodeHealthReportRejected => "NodeHealthReportRejected",
            Self::StartupFailed => "StartupFailed",
            Self::StartupStalled => "StartupStalled",
            Self::PreflightPassed => "PreflightPassed",
            Self::PreflightFailed => "PreflightFailed",
        }
    }

    /// Normal for progress, Warning for everything else.
    pub fn kind(self) -> EventKind {
        match self {
            Self::StartingRay
            | Self::WaitingForCluster
            | Self::Serving
            | Self::Stopping
            | Self::ServerHealthy
            | Self::PreflightPassed => EventKind::Normal,
            _ => EventKind::Warning,
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Something a platform should record: a phase change, a failure, a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Why.
    pub reason: EventReason,
    /// What happened, one line.
    pub message: String,
}

impl Event {
    /// An event with its message.
    pub fn new(reason: EventReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// Normal or Warning (from the reason).
    pub fn kind(&self) -> EventKind {
        self.reason.kind()
    }
}

/// A step of the way from the orchestrator's start to the first
/// completion: what the startup timeline records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartupStep {
    /// The orchestrator started.
    OrchestratorStarted,
    /// This process's (first) Ray node is up (`ray start` returned).
    RayUp,
    /// A node joined the cluster during the wait (one entry per node).
    NodeJoined,
    /// The readiness policy said ready.
    ReadyDecision,
    /// The gang preflight finished (passed or failed).
    Preflight,
    /// The launch policy's plan was made.
    Launch,
    /// The serving process exists (spawned).
    ServerProcessUp,
    /// The serving process's HTTP server answered a probe at all.
    ApiAnswering,
    /// `/health` answered 200 for the first time.
    FirstHealthOk,
    /// The first one-token completion succeeded.
    FirstCompletion,
}

impl StartupStep {
    /// Every step, in the order they happen.
    pub const ALL: [StartupStep; 10] = [
        Self::OrchestratorStarted,
        Self::RayUp,
        Self::NodeJoined,
        Self::ReadyDecision,
        Self::Preflight,
        Self::Launch,
        Self::ServerProcessUp,
        Self::ApiAnswering,
        Self::FirstHealthOk,
        Self::FirstCompletion,
    ];

    /// The kebab-case name, as `/status` and the metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrchestratorStarted => "orchestrator-started",
            Self::RayUp => "ray-up",
            Self::NodeJoined => "node-joined",
            Self::ReadyDecision => "ready-decision",
            Self::Preflight => "preflight",
            Self::Launch => "launch",
            Self::ServerProcessUp => "server-process-up",
            Self::ApiAnswering => "api-answering",
            Self::FirstHealthOk => "first-health-ok",
            Self::FirstCompletion => "first-completion",
        }
    }
}

impl fmt::Display for StartupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
