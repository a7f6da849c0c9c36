//! The lifecycle: one run of a node, start -> wait -> serve -> stop,
//! whatever the backend. Entry point: [`Lifecycle::run`].
//!
//! What differs between backends is behind [`Backend`]: how nodes start,
//! where membership comes from, what serves and how it all stops (Ray:
//! [`RayBackend`] from a [`Plan`]; vLLM's own multi-node mode:
//! `native::NativeBackend`). Everything else is done here once for both:
//! the endpoints (with the backend's routes), Kubernetes awareness
//! (Events, the owner and its pods, through [`crate::platform`]), signal
//! handling and the reaper, the open-file limit, the prefetch, the
//! weights' fetch and the compile cache, node health's policy, the phase at the end, and the last Events flushed.
//!
//! `orchestrator run`, `local` and `plan` are front ends: each computes a
//! plan ([`Plan::from_config`], [`Plan::local`], or the native backend's)
//! and, except `plan`, runs it here.

mod early;
mod local;
mod plan;
mod ray;

pub use local::{LocalCluster, LocalError, local_ray_env};
pub(crate) use plan::shaped_like;
pub use plan::{
    AfterReady, DescribeError, Join, Plan, PlanError, WaitPlan, describe, head_gcs_address,
};
pub use ray::RayBackend;

use crate::endpoints::{PostRoutes, Status, serve_endpoints_with};
use crate::platform::kubernetes::{self as kube_platform, KubeHandle, Owner};
use crate::prefetch::PrefetchConfig;
use crate::serve::ServeOutcome;
use crate::start::raise_open_file_limit;
use crate::supervision::{Shutdown, prepare_process};
use crate::wait::Ready;
use orchestrator_domain::{EventReason, Phase};
use orchestrator_kubernetes::KubernetesConfig;
use orchestrator_policy_host::NodeHealthPolicy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How the lifecycle ended: the process's exit code and, for a failure,
/// what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// 0 after a requested stop or a finished job; 1 for a failure; what
    /// the health policy asked for on its shutdown.
    pub code: u8,
    /// The failure, one message.
    pub error: Option<String>,
}

impl Exit {
    pub(crate) fn ok() -> Self {
        Self {
            code: 0,
            error: None,
        }
    }

    pub(crate) fn failed(code: u8, error: impl Into<String>) -> Self {
        Self {
            code,
            error: Some(error.into()),
        }
    }
}

/// What stops the lifecycle from even starting.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The endpoints' port cannot be bound.
    #[error(
        "cannot serve the endpoints on {address}: {source}; set endpoints-port (0 turns them off)"
    )]
    Endpoints {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SIGTERM/SIGINT handlers cannot be installed.
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Called once the cluster is ready, before serving.
pub(crate) type ReadyHook = Box<dyn FnOnce(&Ready) + Send>;

/// What every backend's plan says about the process around it.
#[derive(Debug, Clone)]
pub struct Surroundings {
    /// Where `/livez`, `/readyz`, `/status` and `/metrics` are served.
    pub endpoints: Option<std::net::SocketAddr>,
    /// The open-file limit for the whole process tree.
    pub open_file_limit: u64,
    /// The model's files to warm while the cluster forms.
    pub prefetch: PrefetchConfig,
    /// The model's files to fetch from an origin (`[serve.weights]`).
    pub weights: Option<crate::weights::WeightsPlan>,
    /// vLLM's compile caches kept and shared (`[serve.compile-cache]`).
    pub compile_cache: Option<crate::compile_cache::CompileCachePlan>,
    /// Kubernetes awareness, on the node that decides readiness: the
    /// settings and the object whose pods form the cluster.
    pub kubernetes: Option<(KubernetesConfig, Owner)>,
}

/// What the lifecycle hands a backend's phases.
pub struct Around<'a> {
    /// What `/status`, `/readyz`, the metrics and the Events show.
    pub status: &'a Arc<Status>,
    /// SIGTERM / SIGINT.
    pub shutdown: &'a Shutdown,
    /// Kubernetes awareness, when on: its facts are for the wait.
    pub kubernetes: &'a mut Option<KubeHandle>,
    /// The node-health policy, when node health is on.
    pub node_health: Option<NodeHealthPolicy>,
    /// Called once the cluster is ready.
    pub on_ready: Option<ReadyHook>,
}

/// A future of a backend's phases.
pub(crate) type PhasesFuture<'a> = Pin<Box<dyn Future<Output = Exit> + 'a>>;

/// What a backend provides: its plan's surroundings, the routes it serves
/// beside the endpoints, and its phases (start its nodes, wait on its
/// membership source, serve with its serving group, stop everything it
/// started).
pub trait Backend: Send {
    /// The process around the phases.
    fn surroundings(&self) -> Surroundings;
    /// POST routes on the endpoints' port (the native leader's
    /// rendezvous); none by default.
    fn routes(&self) -> Option<Arc<dyn PostRoutes>> {
        None
    }
    /// Start -> wait -> serve -> stop. Every process started is stopped
    /// before the future ends.
    fn phases<'a>(&'a mut self, around: Around<'a>) -> PhasesFuture<'a>;
}

/// One run of the lifecycle.
pub struct Lifecycle {
    backend: Box<dyn Backend>,
    status: Arc<Status>,
    node_health: Option<NodeHealthPolicy>,
    on_ready: Option<ReadyHook>,
}

impl Lifecycle {
    /// The Ray backend's lifecycle for `plan`; the head's `policies` are
    /// loaded by the caller (so a bad policy is refused before anything
    /// starts).
    pub fn new(plan: Plan, policies: Option<crate::policies::Policies>) -> Self {
        Self::of(RayBackend::new(plan, policies))
    }

    /// The lifecycle of any backend.
    pub fn of(backend: impl Backend + 'static) -> Self {
        Self {
            backend: Box::new(backend),
            status: Status::new(),
            node_health: None,
            on_ready: None,
        }
    }

    /// Checks this process's nodes with `policy` (when the plan has node
    /// health on); loaded by the caller, like the other policies.
    pub fn with_node_health_policy(mut self, policy: NodeHealthPolicy) -> Self {
        self.node_health = Some(policy);
        self
    }

    /// Calls `hook` once the cluster is ready, before serving.
    pub fn on_ready(mut self, hook: impl FnOnce(&Ready) + Send + 'static) -> Self {
        self.on_ready = Some(Box::new(hook));
        self
    }

    /// The status the endpoints serve.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }

    /// [`run`](Self::run) on a runtime of its own (two worker threads),
    /// for a binary's `main`: every failure, a runtime that cannot start
    /// included, is an exit with code 1 and its message.
    pub fn run_blocking(self) -> Exit {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => runtime
                .block_on(self.run())
                .unwrap_or_else(|e| Exit::failed(1, e.to_string())),
            Err(e) => Exit::failed(1, format!("cannot start the async runtime: {e}")),
        }
    }

    /// [`run_blocking`](Self::run_blocking) for a binary's `main`: a
    /// failure is printed (`error: ...`) and, with the last startup
    /// failure's cause, written as the pod's termination message
    /// ([`termination::write`](crate::supervision::termination::write));
    /// returns the exit code.
    pub fn run_and_report(self) -> u8 {
        let status = self.status();
        let exit = self.run_blocking();
        if let Some(error) = &exit.error {
            eprintln!("error: {error}");
        }
        if exit.code != 0 {
            let cause = status.snapshot().last_failure.map(|f| f.summary());
            let message = crate::supervision::termination::message(
                exit.error.as_deref().unwrap_or("the orchestrator failed"),
                cause.as_deref(),
            );
            crate::supervision::termination::write(&message);
        }
        exit.code
    }

    /// Runs the whole lifecycle; everything started is stopped before this
    /// returns.
    pub async fn run(mut self) -> Result<Exit, LifecycleError> {
        let around = self.backend.surroundings();
        if let Some(address) = around.endpoints {
            serve_endpoints_with(address, Arc::clone(&self.status), self.backend.routes())
                .await
                .map_err(|source| LifecycleError::Endpoints { address, source })?;
        }
        let mut kubernetes = around
            .kubernetes
            .map(|(settings, owner)| kube_platform::spawn(&settings, owner, &self.status));
        let shutdown = prepare_process().map_err(LifecycleError::Signals)?;
        raise_open_file_limit(around.open_file_limit);
        // Warms the weights while the nodes start and the cluster forms;
        // stops when the run ends.
        let _prefetch =
            crate::prefetch::Prefetch::spawn(&around.prefetch, Arc::clone(&self.status));
        let _weights = crate::weights::spawn(around.weights.as_ref(), &self.status);
        let _compile_cache =
            crate::compile_cache::spawn(around.compile_cache.as_ref(), &self.status);
        let exit = self
            .backend
            .phases(Around {
                status: &self.status,
                shutdown: &shutdown,
                kubernetes: &mut kubernetes,
                node_health: self.node_health.take(),
                on_ready: self.on_ready.take(),
            })
            .await;
        settle(&self.status, &exit);
        // The last Events (Stopping, ClusterNotReady, ...) reach the API
        // server before the process ends.
        if let Some(k) = kubernetes {
            k.flush(Duration::from_secs(3)).await;
        }
        Ok(exit)
    }
}

/// The exit that a serve phase's outcome means.
pub(crate) fn served(status: &Status, outcome: ServeOutcome) -> Exit {
    match outcome {
        ServeOutcome::Stopped => {
            status.enter(Phase::Stopping);
            Exit::ok()
        }
        ServeOutcome::Shutdown { exit_code, reason } => {
            status.enter(Phase::Stopping);
            Exit::failed(
                u8::try_from(exit_code).unwrap_or(1),
                format!("the health policy shut the service down: {reason}"),
            )
        }
        ServeOutcome::NotLaunched { reason, refused } => {
            let why = if refused {
                EventReason::LaunchRefused
            } else {
                EventReason::PolicyFailed
            };
            status.fail(why, reason.clone());
            Exit::failed(1, reason)
        }
    }
}

/// Makes the phase match how the run ended, whatever path it took: a
/// failure not yet reported enters `failed`; a clean end enters
/// `stopping`. Called before Ray is stopped and once more at the end.
pub(crate) fn settle(status: &Status, exit: &Exit) {
    let phase = status.snapshot().phase;
    match &exit.error {
        Some(error) if phase != Phase::Failed => {
            let reason = if matches!(phase, Phase::Start | Phase::Wait) {
                EventReason::ClusterNotReady
            } else {
                EventReason::RayExited
            };
            status.fail(reason, error.clone());
        }
        None if !matches!(phase, Phase::Stopping | Phase::Failed) => status.enter(Phase::Stopping),
        _ => {}
    }
}
