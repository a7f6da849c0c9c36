//! The serve phase: the launch policy's plan ([`launch`]) run as a
//! supervised [`server`] whose output the [`startup`] watch reads (each
//! rank's stage, a failed start's cause), probed over HTTP ([`probe`]),
//! judged by the health policy ([`health_loop`]), restarted or shut down
//! as it says.
//! Entry points: [`plan_launch`], then [`serve_planned`].

mod health_loop;
mod launch;
pub(crate) use crate::probe;
mod server;
pub mod shm;
pub(crate) mod stall;
pub(crate) mod startup;

pub use health_loop::{supervise, supervise_prelaunched};
pub use launch::{NoPlan, ask, plan_launch};
pub use server::ServerProcess;
pub use stall::{RankDiagnosis, RankStacks, StallSpec};

use crate::config::{PoliciesConfig, ServeConfig};
use crate::endpoints::Status;
use crate::membership::MembershipSource;
use crate::supervision::Shutdown;
use crate::wait::Ready;
use orchestrator_domain::{KeyValue, LaunchPlan, Phase, ServeSettings, StartupStep};
use std::time::Duration;

/// Everything the serve phase needs besides the policies: the settings
/// the launch policy sees, its and the health policy's parameters, and
/// how the server is probed and stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSpec {
    /// What the launch policy is asked to serve.
    pub settings: ServeSettings,
    /// The launch policy's parameters.
    pub launch_params: Vec<KeyValue>,
    /// The health policy's parameters.
    pub health_params: Vec<KeyValue>,
    /// Where the probes reach the server, `HOST:PORT`.
    pub probe_address: String,
    /// How often `/health` is probed (and the health policy asked).
    pub health_interval: Duration,
    /// How often a one-token completion is sent.
    pub generation_interval: Duration,
    /// Timeout of a `/health` probe.
    pub health_timeout: Duration,
    /// Timeout of a generation probe.
    pub generation_timeout: Duration,
    /// Between SIGTERM and SIGKILL when the server is stopped.
    pub stop_grace: Duration,
    /// On a stop request: how long in-flight requests may take to finish
    /// before the server is stopped (zero: no drain).
    pub drain_timeout: Duration,
    /// Ready only after a warm-up completion succeeded (`[serve]
    /// ready-after-warmup`).
    pub ready_after_warmup: bool,
    /// The local copy of `settings.model` that the prefetch makes on every
    /// node (`[serve.prefetch] copy-to`, when `paths` is the model's
    /// directory): served from where every serving node completed it.
    pub local_copy: Option<std::path::PathBuf>,
    /// At the ready decision, how long the launch waits for local copies
    /// still in progress (`[serve.prefetch] copy-wait-seconds`).
    pub copy_wait: Duration,
    /// The load-driven recommendation (`[scale]`), when it is on.
    pub scale: Option<crate::scale::ScaleSpec>,
    /// Stage deadlines and how a stall is diagnosed.
    pub stall: StallSpec,
    /// The gang preflight before a launch.
    pub preflight: crate::preflight::PreflightSpec,
    /// With `[serve.weights]`: how long the launch waits for every serving
    /// node's fetch (the launch serves the fetched folder, or does not
    /// start).
    pub weights_wait: Option<Duration>,
    /// With `[serve.compile-cache]`: how long the launch waits for this
    /// node's cache to be prepared (a pull from a peer).
    pub compile_cache_wait: Option<Duration>,
}

impl ServeSpec {
    /// The spec of a configuration's `[serve]` and `[policies]` tables.
    pub fn from_config(serve: &ServeConfig, policies: &PoliciesConfig) -> Self {
        let ms = |v: u64| Duration::from_millis(v.max(10));
        Self {
            settings: serve.settings(),
            launch_params: policies.launch.params(),
            health_params: policies.health.params(),
            probe_address: serve.probe_address(),
            health_interval: ms(serve.health_interval_ms),
            generation_interval: ms(serve.generation_interval_ms),
            health_timeout: ms(serve.health_timeout_ms),
            generation_timeout: ms(serve.generation_timeout_ms),
            stop_grace: Duration::from_secs(serve.stop_grace_seconds),
            drain_timeout: Duration::from_secs(serve.drain_timeout_seconds),
            ready_after_warmup: serve.ready_after_warmup,
            local_copy: serve
                .prefetch
                .local_copy_of(serve.model.as_deref().unwrap_or_default()),
            copy_wait: Duration::from_secs(serve.prefetch.copy_wait_seconds),
            scale: None,
            stall: StallSpec::of(serve),
            preflight: crate::preflight::PreflightSpec::of(&serve.preflight),
            weights_wait: serve
                .weights
                .enabled()
                .then(|| Duration::from_secs(serve.weights.wait_seconds)),
            compile_cache_wait: serve
                .compile_cache
                .enabled
                .then(|| Duration::from_secs(serve.compile_cache.wait_seconds)),
        }
    }

    /// The spec of a whole configuration: `[serve]`, `[policies]` and
    /// `[scale]` (the plan builder of every backend's `run` and `plan`).
    pub(crate) fn of_config(config: &crate::config::Config) -> Self {
        Self {
            scale: crate::scale::ScaleSpec::from_config(&config.scale, &config.policies),
            ..Self::from_config(&config.serve, &config.policies)
        }
    }

    /// The host part of [`probe_address`](Self::probe_address): this
    /// node's server as the probes reach it.
    pub(crate) fn probe_host(&self) -> &str {
        self.probe_address
            .rsplit_once(':')
            .map_or(self.probe_address.as_str(), |(host, _)| host)
    }

    /// The model name the API serves (and the generation probe asks for).
    pub(crate) fn served_name(&self) -> &str {
        self.settings
            .served_model_name
            .as_deref()
            .unwrap_or(&self.settings.model)
    }
}

/// What the serve phase works with: where membership comes from, where
/// progress is reported, and the stop request.
#[derive(Clone, Copy)]
pub struct ServeContext<'a> {
    /// Node deaths and joins.
    pub source: &'a dyn MembershipSource,
    /// `/status`, `/readyz`, metrics, Events.
    pub status: &'a Status,
    /// SIGTERM / SIGINT.
    pub shutdown: &'a Shutdown,
    /// Every node's own health, when node health is on.
    pub health: Option<&'a tokio::sync::watch::Receiver<std::sync::Arc<crate::node_health::Board>>>,
    /// The other ranks of a server launched on every node (the native
    /// backend); `None` when the one process is the whole server (Ray).
    pub group: Option<&'a dyn ServingGroup>,
}

/// A future of a [`ServingGroup`] call.
pub(crate) type GroupCall<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The ranks of a server that runs on every node (vLLM's own multi-node
/// mode): started and stopped together with the local process, so that a
/// restart is always a restart of the whole group.
pub trait ServingGroup: Send + Sync {
    /// Tells every other rank present to start its part of `plan` now;
    /// returns the nodes as they are after it (every rank told is alive).
    fn start(&self, plan: &LaunchPlan) -> Vec<orchestrator_domain::Node>;
    /// Tells every other rank to stop, and waits up to `grace` (and a
    /// heartbeat or two) for them to confirm.
    fn stop(&self, grace: Duration) -> GroupCall<'_>;
    /// Resolves once every rank is present again (after a rank was lost).
    fn assembled(&self) -> GroupCall<'_>;
    /// Each other rank's server stage, as the ranks last reported it.
    fn stages(&self) -> Vec<orchestrator_domain::RankStage> {
        Vec::new()
    }
    /// What each other rank's orchestrator says of its serving process
    /// (stopped, the stacks it took of a stall).
    fn diagnoses(&self) -> Vec<RankDiagnosis> {
        Vec::new()
    }
    /// Asks `rank`'s orchestrator for its server's stacks: it is stalled
    /// in the stage it entered at `since_unix_ms`, past `deadline_ms`.
    fn want_stacks(&self, _rank: u32, _since_unix_ms: u64, _deadline_ms: u64) {}
    /// The start failures ranks reported since the last call (each once).
    fn take_failures(&self) -> Vec<orchestrator_domain::StartupFailure> {
        Vec::new()
    }
}

/// How the serve phase ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ServeOutcome {
    /// A stop was requested (SIGTERM/SIGINT); the server was drained.
    Stopped,
    /// The health policy said shut down; the server was stopped.
    Shutdown {
        /// The exit code it asked for.
        exit_code: i32,
        /// Why.
        reason: String,
    },
    /// The launch policy refused the layout, or failed; nothing started.
    NotLaunched {
        /// The policy's words.
        reason: String,
        /// Refused (the layout) rather than failed (the plugin).
        refused: bool,
    },
}

/// The serve phase once the launch is planned, the same on every
/// backend: `plan` supervised by the health loop (started now, or the
/// `prelaunched` process taken over), the scale recommendation beside it
/// when `[scale]` is on (`spec.scale` and a scale policy), until the
/// health policy's shutdown or a stop request (`/readyz` false at once,
/// then the drain, then the stop).
pub(crate) async fn serve_planned(
    spec: &ServeSpec,
    plan: &LaunchPlan,
    ready: &Ready,
    policies: &mut crate::policies::Policies,
    ctx: ServeContext<'_>,
    prelaunched: Option<ServerProcess>,
) -> ServeOutcome {
    ctx.status.mark(
        StartupStep::Launch,
        plan.argv.first().cloned().unwrap_or_default(),
    );
    ctx.status.enter(Phase::Serve);
    let supervised = supervise_prelaunched(
        spec,
        plan,
        &ready.snapshot.nodes,
        Some(ready.decided_at),
        &mut policies.health,
        ctx,
        prelaunched,
    );
    // The scale recommendation runs beside the health loop and ends with it.
    let serving = async {
        match (spec.scale.as_ref(), policies.scale.as_mut()) {
            (Some(scale), Some(policy)) => tokio::select! {
                outcome = supervised => outcome,
                never = crate::scale::recommend_while_serving(scale, policy, &spec.probe_address, ctx.status) => match never {},
            },
            _ => supervised.await,
        }
    };
    tokio::pin!(serving);
    tokio::select! {
        outcome = &mut serving => outcome,
        () = ctx.shutdown.requested() => {
            // /readyz turns false at once; the server drains.
            ctx.status.enter(Phase::Stopping);
            serving.await
        }
    }
}
