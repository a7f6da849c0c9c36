//! What the orchestrator reports about itself: `/livez`, `/readyz`,
//! `/status` (JSON) and `/metrics` (Prometheus text), on one port.
//! Entry points: [`Status`], which the phases write to, and
//! [`serve_endpoints`], which answers from it. [`Status`] is also the one
//! owner of the current [`Phase`] and publishes the [`Event`]s a platform
//! records.

mod conn;
mod node_metrics;
mod scale_metrics;
mod startup_metrics;
mod weights_metrics;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use orchestrator_domain::{
    Event, EventReason, NodeHealthState, NodeReadings, Phase, StartupStep, VerdictKind,
};
use orchestrator_policy_host::World;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub use crate::config::DEFAULT_ENDPOINTS_PORT as DEFAULT_PORT;

/// The orchestrator's phase, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// Labels of a policy call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorldLabel {
    world: &'static str,
}

/// Labels of a health verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

/// One entry of the phase history.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PhaseEntry {
    /// The phase.
    pub phase: Phase,
    /// When it began, ms since the Unix epoch.
    pub(crate) since_ms: u64,
}

/// One node's health as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct NodeHealthView {
    /// The Ray node id (empty until found).
    pub node_id: String,
    /// The node's address.
    pub address: String,
    /// Its state.
    pub state: NodeHealthState,
    /// Why, when not healthy.
    pub reason: String,
    /// Time since its last new report (the head's view; 0 for this
    /// process's own nodes).
    pub(crate) report_age_ms: u64,
    /// What its probes read.
    pub readings: NodeReadings,
}

impl NodeHealthView {
    /// The view of one node: its id, state and reason, the readings
    /// (whose address it shows), and the age of its last report.
    pub fn new(
        node_id: String,
        state: NodeHealthState,
        reason: String,
        readings: &NodeReadings,
        report_age_ms: u64,
    ) -> Self {
        Self {
            node_id,
            address: readings.address.clone(),
            state,
            reason,
            report_age_ms,
            readings: readings.clone(),
        }
    }
}

/// One step of the startup timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct TimelineEntry {
    /// The step.
    pub step: StartupStep,
    /// When, in ms since the orchestrator process started.
    pub(crate) after_ms: u64,
    /// What it was about (a node's address, a pid), when anything.
    pub detail: String,
}

/// Node joins listed one by one in the timeline; later ones replace the
/// last entry.
const MAX_JOINS_IN_TIMELINE: usize = 32;

/// How long this process has run, from `/proc/self/stat` (its start time
/// in clock ticks after boot) and `/proc/uptime`; zero when unreadable.
fn process_age() -> std::time::Duration {
    let start_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(19)?
                .parse::<f64>()
                .ok()
        });
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    match (start_ticks, uptime) {
        // Linux reports in USER_HZ, 100 on every architecture it runs on.
        (Some(ticks), Some(up)) if up >= ticks / 100.0 => {
            std::time::Duration::from_secs_f64(up - ticks / 100.0)
        }
        _ => std::time::Duration::ZERO,
    }
}

/// The state behind `/status` and `/readyz`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct StatusState {
    /// The current phase.
    pub phase: Phase,
    /// Every phase entered, in order.
    pub history: Vec<PhaseEntry>,
    /// Nodes alive / expected.
    pub(crate) nodes_alive: u32,
    /// Nodes expected.
    pub(crate) nodes_expected: u32,
    /// The readiness policy's last answer.
    pub(crate) last_readiness: Option<String>,
    /// The health policy's last verdict.
    pub(crate) last_health: Option<String>,
    /// Whether the serving process answers and the last verdict is healthy.
    pub ready: bool,
    /// Restarts of the serving process.
    pub restarts: u32,
    /// The serving process's pid, while it runs.
    pub server_pid: Option<i32>,
    /// Why expected nodes are missing, as the platform (Kubernetes) says,
    /// while the wait phase runs.
    pub diagnostics: Vec<String>,
    /// The weights' prefetch into the page cache, when one runs.
    pub prefetch: Option<orchestrator_domain::PrefetchProgress>,
    /// The startup timeline: each step once (node joins: each node), in
    /// ms since the orchestrator process started.
    pub timeline: Vec<TimelineEntry>,
    /// This process's own nodes' health checks.
    pub(crate) own_health: Vec<NodeHealthView>,
    /// Head: every node's health, from their reports.
    pub node_health: Vec<NodeHealthView>,
    /// Head, with `[scale]` on: the replicas the load needs.
    pub scale: Option<ScaleView>,
    /// Each rank's server: the stage it reached and since when (the
    /// current server's start; a new launch starts over).
    pub stages: Vec<orchestrator_domain::RankStage>,
    /// The first server start that failed in this run of the
    /// orchestrator, kept across restarts.
    pub first_failure: Option<orchestrator_domain::StartupFailure>,
    /// The latest one, with how many in a row had the same cause.
    pub last_failure: Option<orchestrator_domain::StartupFailure>,
    /// The current start's stall: a rank past its stage's deadline, with
    /// its innermost frames and where its stacks were written.
    pub stall: Option<orchestrator_domain::Stall>,
    /// The gang preflight before the (last) launch.
    pub preflight: Option<crate::preflight::PreflightResult>,
    /// `[serve.weights]` on this node: where it stands, how much came
    /// from the origin and from each peer.
    pub weights: Option<orchestrator_weights::Progress>,
    /// `[serve.compile-cache]` on this node: the key, its inputs, hit,
    /// miss (and why) or pulled (and from whom).
    pub compile_cache: Option<orchestrator_domain::compile_cache::CacheView>,
    /// The last health verdict's kind.
    #[serde(skip)]
    pub(crate) last_verdict: Option<VerdictKind>,
    /// The restart count when the last failure was recorded: a second
    /// rank failing in the same attempt is the same failure.
    #[serde(skip)]
    pub(crate) last_failure_attempt: Option<u32>,
}

/// The scale recommendation as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ScaleView {
    /// The scale policy.
    pub policy: String,
    /// Its last answer (none before the first).
    pub desired_replicas: Option<u32>,
    /// Why.
    pub reason: String,
    /// The replicas the load is spread over now.
    pub current_replicas: u32,
    /// The least an answer may name.
    pub min_replicas: u32,
    /// The most an answer may name.
    pub max_replicas: u32,
    /// Samples in the window.
    pub samples: u32,
    /// The window, seconds.
    pub(crate) window_seconds: u64,
    /// The newest sample.
    pub last_sample: Option<orchestrator_domain::LoadSample>,
    /// Why no sample or no answer came last time, if so.
    pub error: Option<String>,
}

/// Events waiting for the platform; beyond this many the newest are dropped
/// (the Event recorder rate-limits anyway).
const EVENT_QUEUE: usize = 64;

/// Metrics and state, shared between the phases and the endpoints.
pub struct Status {
    state: Mutex<StatusState>,
    started: Instant,
    registry: Registry,
    phase: Family<PhaseLabel, Gauge>,
    phase_seconds: Family<PhaseLabel, Gauge<f64, AtomicU64>>,
    nodes_alive: Gauge,
    nodes_expected: Gauge,
    policy_seconds: Family<WorldLabel, Histogram>,
    restarts: Counter,
    verdicts: Family<VerdictLabel, Counter>,
    node_metrics: node_metrics::NodeMetrics,
    scale_metrics: scale_metrics::ScaleMetrics,
    startup_metrics: startup_metrics::StartupMetrics,
    prefetch_done: Gauge,
    prefetch_total: Gauge,
    /// The prefetch's state, for whoever reports it as it changes.
    prefetch_state: tokio::sync::watch::Sender<Option<orchestrator_domain::PrefetchState>>,
    events: Mutex<Option<tokio::sync::mpsc::Sender<Event>>>,
    weights_metrics: weights_metrics::WeightsMetrics,
    /// This node's chunks of `[serve.weights]`, offered to its group on
    /// the endpoints' port.
    weights_service: std::sync::OnceLock<Arc<orchestrator_weights::PeerService>>,
}

/// The fetch of `[serve.weights]` as a local copy (what node health
/// reports and the launch waits for).
fn weights_as_copy(p: &orchestrator_weights::Progress) -> orchestrator_domain::PrefetchProgress {
    use orchestrator_domain::PrefetchState;
    use orchestrator_weights::FetchState;
    orchestrator_domain::PrefetchProgress {
        state: match p.state {
            FetchState::Listing => PrefetchState::Listing,
            FetchState::Fetching | FetchState::Verifying => PrefetchState::Copying,
            FetchState::Done => PrefetchState::Done,
            FetchState::Failed => PrefetchState::Failed,
        },
        files: 0,
        bytes_done: p.done_bytes,
        bytes_total: p.total_bytes,
        elapsed_ms: (p.seconds * 1000.0) as u64,
        error: p.error.clone(),
        copy_to: p.path.clone(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("state", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Status {
    /// A fresh status in phase `start`.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("orchestrator");
        let phase = Family::<PhaseLabel, Gauge>::default();
        let phase_seconds = Family::<PhaseLabel, Gauge<f64, AtomicU64>>::default();
        let nodes_alive = Gauge::default();
        let nodes_expected = Gauge::default();
        let policy_seconds = Family::<WorldLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1])
        });
        let restarts = Counter::default();
        let verdicts = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "phase",
            "1 for the current phase, 0 otherwise",
            phase.clone(),
        );
        registry.register(
            "phase_duration_seconds",
            "Time spent in each phase so far",
            phase_seconds.clone(),
        );
        registry.register(
            "nodes_alive",
            "Ray nodes alive in the GCS",
            nodes_alive.clone(),
        );
        registry.register(
            "nodes_expected",
            "Ray nodes the readiness policy expects",
            nodes_expected.clone(),
        );
        registry.register(
            "policy_call_seconds",
            "Latency of policy plugin calls",
            policy_seconds.clone(),
        );
        registry.register(
            "server_restarts",
            "Restarts of the serving process",
            restarts.clone(),
        );
        registry.register(
            "health_verdicts",
            "Health policy verdicts",
            verdicts.clone(),
        );
        let node_metrics = node_metrics::NodeMetrics::default();
        node_metrics.register(&mut registry);
        let scale_metrics = scale_metrics::ScaleMetrics::default();
        scale_metrics.register(&mut registry);
        let startup_metrics = startup_metrics::StartupMetrics::default();
        startup_metrics.register(&mut registry);
        let (prefetch_done, prefetch_total) = (Gauge::default(), Gauge::default());
        registry.register(
            "prefetch_bytes_done",
            "Bytes of the model's files read into the page cache so far",
            prefetch_done.clone(),
        );
        registry.register(
            "prefetch_bytes_total",
            "Bytes of the model's files to read into the page cache",
            prefetch_total.clone(),
        );
        let weights_metrics = weights_metrics::WeightsMetrics::default();
        weights_metrics.register(&mut registry);
        let age = process_age();
        let status = Arc::new(Self {
            state: Mutex::new(StatusState::default()),
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            registry,
            phase,
            phase_seconds,
            nodes_alive,
            nodes_expected,
            policy_seconds,
            restarts,
            verdicts,
            node_metrics,
            scale_metrics,
            startup_metrics,
            prefetch_done,
            prefetch_total,
            prefetch_state: tokio::sync::watch::Sender::new(None),
            events: Mutex::new(None),
            weights_metrics,
            weights_service: std::sync::OnceLock::new(),
        });
        status.enter(Phase::Start);
        status.mark(StartupStep::OrchestratorStarted, "");
        status
    }

    fn with<R>(&self, f: impl FnOnce(&mut StatusState) -> R) -> R {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The events from now on (phase changes, failures, restarts), for a
    /// platform to record. One subscriber; a second replaces the first.
    pub fn subscribe_events(&self) -> tokio::sync::mpsc::Receiver<Event> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        match self.events.lock() {
            Ok(mut slot) => *slot = Some(tx),
            Err(poisoned) => *poisoned.into_inner() = Some(tx),
        }
        rx
    }

    /// Ends the event stream: the subscriber gets what is queued, then the
    /// end.
    pub(crate) fn close_events(&self) {
        match self.events.lock() {
            Ok(mut slot) => *slot = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    /// Publishes an event to the subscriber, if any. Never blocks: a full
    /// queue drops it.
    pub fn event(&self, reason: EventReason, message: String) {
        let sender = match self.events.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(tx) = sender {
            let _ = tx.try_send(Event::new(reason, message));
        }
    }

    /// Enters `phase`: the one place the phase changes. Entering a new
    /// phase publishes its event (a failure publishes its own, see
    /// [`fail`](Self::fail)).
    pub fn enter(&self, phase: Phase) {
        let (alive, expected, previous) = self.with(|s| {
            let previous = s.phase;
            s.phase = phase;
            s.history.push(PhaseEntry {
                phase,
                since_ms: now_ms(),
            });
            if phase != Phase::Serve {
                s.ready = false;
            }
            if phase != Phase::Wait {
                s.diagnostics.clear();
            }
            (s.nodes_alive, s.nodes_expected, previous)
        });
        if previous != phase {
            match phase {
                Phase::Start => self.event(EventReason::StartingRay, "starting Ray".into()),
                Phase::Wait => self.event(
                    EventReason::WaitingForCluster,
                    format!("waiting for the Ray cluster ({alive} of {expected} nodes alive)"),
                ),
                Phase::Serve => self.event(
                    EventReason::Serving,
                    format!("cluster ready ({alive} of {expected} nodes alive); serving"),
                ),
                Phase::Stopping => self.event(EventReason::Stopping, "stopping".into()),
                // `fail` publishes the failure's own event.
                Phase::Failed => {}
            }
        }
        for p in Phase::ALL {
            self.phase
                .get_or_create(&PhaseLabel { phase: p.name() })
                .set(i64::from(p == phase));
        }
    }

    /// Records the membership.
    pub fn nodes(&self, alive: u32, expected: u32) {
        self.with(|s| {
            s.nodes_alive = alive;
            s.nodes_expected = expected;
        });
        self.nodes_alive.set(i64::from(alive));
        self.nodes_expected.set(i64::from(expected));
    }

    /// Records a policy call's latency.
    pub(crate) fn policy_call(&self, world: World, seconds: f64) {
        self.policy_seconds
            .get_or_create(&WorldLabel {
                world: world.name(),
            })
            .observe(seconds);
    }

    /// Enters phase `failed`, publishing a Warning event with `reason`
    /// and `message`.
    pub fn fail(&self, reason: EventReason, message: String) {
        self.event(reason, message);
        self.enter(Phase::Failed);
    }

    /// Records why expected nodes are missing (shown by `/status`).
    pub fn diagnostics(&self, lines: Vec<String>) {
        self.with(|s| s.diagnostics = lines);
    }

    /// Records the readiness policy's answer.
    pub fn readiness(&self, answer: String) {
        self.with(|s| s.last_readiness = Some(answer));
    }

    /// Records a health verdict and whether the service is ready to take
    /// traffic. A change of verdict is published as an event.
    pub fn health(&self, verdict: VerdictKind, text: String, ready: bool) {
        self.verdicts
            .get_or_create(&VerdictLabel {
                verdict: verdict.name(),
            })
            .inc();
        let changed = self.with(|s| {
            let changed = s.last_verdict != Some(verdict);
            s.last_verdict = Some(verdict);
            s.last_health = Some(text.clone());
            s.ready = ready;
            changed
        });
        if changed {
            let reason = match verdict {
                VerdictKind::Healthy => EventReason::ServerHealthy,
                VerdictKind::Degraded => EventReason::ServerDegraded,
                VerdictKind::Restart => EventReason::ServerRestarting,
                VerdictKind::Shutdown => EventReason::ShuttingDown,
                VerdictKind::PolicyFailed => EventReason::HealthPolicyFailed,
            };
            self.event(reason, text);
        }
    }

    /// Marks the service not ready (a drain has begun) without changing
    /// the phase, which the lifecycle owns.
    pub(crate) fn unready(&self) {
        self.with(|s| s.ready = false);
    }

    /// Records where each rank's server is (the current server's ranks;
    /// a new server starts over).
    pub(crate) fn stages(&self, stages: Vec<orchestrator_domain::RankStage>) {
        for stage in &stages {
            self.startup_metrics.stage(stage.rank, stage.stage);
        }
        self.with(|s| s.stages = stages);
    }

    /// Records a server start that failed: kept as the last failure
    /// (counted with the ones before it of the same cause) and, the first
    /// time, as the first; logged as one line and published as an event.
    /// A second rank failing in the same attempt (no restart between) is
    /// logged only.
    pub(crate) fn startup_failed(&self, mut failure: orchestrator_domain::StartupFailure) {
        self.startup_metrics.failed();
        let counted = self.with(|s| {
            if s.last_failure_attempt == Some(s.restarts) {
                // Another rank of the same attempt: the first one is its
                // cause.
                return false;
            }
            s.last_failure_attempt = Some(s.restarts);
            failure.identical = match &s.last_failure {
                Some(last) if last.same_cause(&failure) => last.identical.saturating_add(1),
                _ => 1,
            };
            if s.first_failure.is_none() {
                s.first_failure = Some(failure.clone());
            }
            s.last_failure = Some(failure.clone());
            true
        });
        let summary = failure.summary();
        if !counted {
            tracing::warn!(
                rank = failure.rank,
                stage = failure.stage.name(),
                "also failed in the same start: {summary}"
            );
            return;
        }
        let times = if failure.identical > 1 {
            format!(" ({} times in a row)", failure.identical)
        } else {
            String::new()
        };
        tracing::error!(
            rank = failure.rank,
            stage = failure.stage.name(),
            "startup failed: {summary}{times}"
        );
        self.event(EventReason::StartupFailed, format!("{summary}{times}"));
    }

    /// Records a stall of the current start: `/status`, one log line and
    /// an Event.
    pub(crate) fn stalled(&self, stall: orchestrator_domain::Stall) {
        let mut summary = stall.summary();
        if let Some(file) = &stall.stacks_file {
            summary.push_str(&format!("; stacks kept in {file}"));
        }
        tracing::error!(
            rank = stall.rank,
            stage = stall.stage.name(),
            "startup stalled: {summary}"
        );
        self.with(|s| s.stall = Some(stall));
        self.event(EventReason::StartupStalled, summary);
    }

    /// Reports a gang preflight: the timeline, `/status`, the log and an
    /// Event. `Err` (the message) when it failed and `mode` requires it.
    pub(crate) fn preflight_done(
        &self,
        mode: crate::config::PreflightMode,
        result: crate::preflight::PreflightResult,
    ) -> Result<(), String> {
        let summary = result.summary();
        let passed = result.passed;
        self.mark(
            StartupStep::Preflight,
            if passed { "passed" } else { "failed" },
        );
        self.with(|s| s.preflight = Some(result));
        if passed {
            tracing::info!("{summary}");
            self.event(EventReason::PreflightPassed, summary);
            return Ok(());
        }
        if mode == crate::config::PreflightMode::Required {
            tracing::error!(
                "{summary}; the server is not started (serve.preflight.mode = \"required\")"
            );
            self.event(EventReason::PreflightFailed, summary.clone());
            return Err(format!(
                "{summary}; the server is not started (serve.preflight.mode = \"required\"; \"warn\" starts it anyway)"
            ));
        }
        tracing::warn!("{summary}; starting the server anyway (serve.preflight.mode = \"warn\")");
        self.event(EventReason::PreflightFailed, summary);
        Ok(())
    }

    /// A new start: its stall is yet to come.
    pub(crate) fn start_again(&self) {
        self.with(|s| s.stall = None);
    }

    /// The server served: failures before it are no longer "in a row"
    /// with the next one (the last one stays shown).
    pub(crate) fn start_served(&self) {
        self.with(|s| {
            if let Some(last) = s.last_failure.as_mut() {
                last.identical = 0;
            }
        });
    }

    /// The current start's stall and the last failed start, for the
    /// health policy's snapshot.
    pub(crate) fn start_view(
        &self,
    ) -> (
        Option<orchestrator_domain::Stall>,
        Option<orchestrator_domain::StartupFailure>,
    ) {
        self.with(|s| (s.stall.clone(), s.last_failure.clone()))
    }

    /// Records a restart of the serving process.
    pub fn restarted(&self) {
        self.restarts.inc();
        let n = self.with(|s| {
            s.restarts += 1;
            // The next verdict, even the same as before, is news.
            s.last_verdict = None;
            s.restarts
        });
        self.event(
            EventReason::ServerRestarted,
            format!("the serving process was restarted (restart {n})"),
        );
    }

    /// Records the scale recommendation and the load it saw.
    pub fn scale(&self, view: ScaleView) {
        self.scale_metrics.update(&view);
        self.with(|s| s.scale = Some(view));
    }

    /// Records the prefetch's progress.
    pub fn prefetch(&self, progress: orchestrator_domain::PrefetchProgress) {
        self.prefetch_done
            .set(i64::try_from(progress.bytes_done).unwrap_or(i64::MAX));
        self.prefetch_total
            .set(i64::try_from(progress.bytes_total).unwrap_or(i64::MAX));
        let state = progress.state;
        self.with(|s| s.prefetch = Some(progress));
        self.prefetch_state.send_if_modified(|s| {
            let changed = *s != Some(state);
            *s = Some(state);
            changed
        });
    }

    /// The prefetch's state from now on: changes when it does (listing,
    /// reading or copying, done, failed), not with every byte.
    pub(crate) fn prefetch_states(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<orchestrator_domain::PrefetchState>> {
        self.prefetch_state.subscribe()
    }

    /// Records the progress of `[serve.weights]` on this node.
    pub(crate) fn weights(&self, progress: orchestrator_weights::Progress) {
        self.weights_metrics.update(&progress);
        let state = self.with(|s| {
            s.weights = Some(progress);
            s.weights.as_ref().map(weights_as_copy).map(|c| c.state)
        });
        // Node health reports the copy as it changes.
        self.prefetch_state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// The progress of `[serve.weights]`, when it is on.
    pub(crate) fn weights_progress(&self) -> Option<orchestrator_weights::Progress> {
        self.with(|s| s.weights.clone())
    }

    /// This node's local copy of the model as the launch and node health
    /// see it: the fetch of `[serve.weights]`, else the prefetch's.
    pub(crate) fn local_copy_progress(&self) -> Option<orchestrator_domain::PrefetchProgress> {
        self.with(|s| {
            s.weights
                .as_ref()
                .map(weights_as_copy)
                .or(s.prefetch.clone())
        })
    }

    /// The service answering `/weights/v1/` on the endpoints' port (the
    /// weights' chunks and the compile caches): made once, by `make`.
    pub(crate) fn peer_service(
        &self,
        make: impl FnOnce() -> Arc<orchestrator_weights::PeerService>,
    ) -> Arc<orchestrator_weights::PeerService> {
        Arc::clone(self.weights_service.get_or_init(make))
    }

    /// Records where `[serve.compile-cache]` stands on this node.
    pub(crate) fn compile_cache(&self, view: orchestrator_domain::compile_cache::CacheView) {
        self.with(|s| s.compile_cache = Some(view));
    }

    /// Where `[serve.compile-cache]` stands, when it is on.
    pub(crate) fn compile_cache_view(
        &self,
    ) -> Option<orchestrator_domain::compile_cache::CacheView> {
        self.with(|s| s.compile_cache.clone())
    }

    /// Whether the service takes traffic (ready after the warm-up).
    pub(crate) fn is_ready(&self) -> bool {
        self.with(|s| s.ready)
    }

    /// Records a startup step: the first of each (every node join), with
    /// its time since the orchestrator started. Returns whether it was
    /// recorded.
    pub fn mark(&self, step: StartupStep, detail: impl Into<String>) -> bool {
        let after = self.started.elapsed();
        let detail = detail.into();
        let recorded = self.with(|s| {
            if step != StartupStep::NodeJoined && s.timeline.iter().any(|e| e.step == step) {
                return false;
            }
            // Thousands of nodes: the first joins and the latest one.
            let joins = s
                .timeline
                .iter()
                .filter(|e| e.step == StartupStep::NodeJoined)
                .count();
            if step == StartupStep::NodeJoined
                && joins >= MAX_JOINS_IN_TIMELINE
                && let Some(last) = s
                    .timeline
                    .iter_mut()
                    .rev()
                    .find(|e| e.step == StartupStep::NodeJoined)
            {
                last.after_ms = after.as_millis() as u64;
                last.detail = format!(
                    "{detail} (and {} more before it)",
                    joins - MAX_JOINS_IN_TIMELINE + 1
                );
                return true;
            }
            s.timeline.push(TimelineEntry {
                step,
                after_ms: after.as_millis() as u64,
                detail,
            });
            true
        });
        if recorded {
            self.startup_metrics.step(step, after.as_secs_f64());
        }
        recorded
    }

    /// The startup timeline as a short table: each step, when (s after the
    /// start) and the time since the step before.
    pub fn timeline_table(&self) -> String {
        let timeline = self.with(|s| s.timeline.clone());
        let mut out = format!(
            "{:<22} {:>9} {:>9}  {}\n",
            "step", "at (s)", "+ (s)", "detail"
        );
        let mut previous = 0;
        for e in &timeline {
            out.push_str(&format!(
                "{:<22} {:>9.3} {:>9.3}  {}\n",
                e.step.name(),
                e.after_ms as f64 / 1000.0,
                e.after_ms.saturating_sub(previous) as f64 / 1000.0,
                e.detail
            ));
            previous = e.after_ms;
        }
        out
    }

    /// Records this process's own nodes' health checks (their metrics
    /// too, unless the head's view of every node is there).
    pub(crate) fn own_node_health(&self, views: Vec<NodeHealthView>) {
        let head_view = self.with(|s| {
            s.own_health = views.clone();
            !s.node_health.is_empty()
        });
        if !head_view {
            self.node_metrics.update(&views);
        }
    }

    /// Head: records every node's health, from their reports.
    pub fn node_health(&self, views: Vec<NodeHealthView>) {
        self.node_metrics.update(&views);
        self.with(|s| s.node_health = views);
    }

    /// Records the serving process's pid.
    pub fn server_pid(&self, pid: Option<i32>) {
        self.with(|s| s.server_pid = pid);
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> StatusState {
        self.with(|s| s.clone())
    }

    fn metrics_text(&self) -> String {
        let history = self.with(|s| s.history.clone());
        let now = now_ms();
        for (i, entry) in history.iter().enumerate() {
            let end = history.get(i + 1).map_or(now, |next| next.since_ms);
            let seconds = end.saturating_sub(entry.since_ms) as f64 / 1000.0;
            self.phase_seconds
                .get_or_create(&PhaseLabel {
                    phase: entry.phase.name(),
                })
                .set(seconds);
        }
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn respond(&self, path: &str) -> (u16, &'static str, String) {
        match path {
            "/livez" => (200, "text/plain", "ok\n".into()),
            "/readyz" => {
                let s = self.snapshot();
                if s.ready {
                    (200, "text/plain", "ready\n".into())
                } else {
                    let why = s
                        .last_health
                        .clone()
                        .or(s.last_readiness.clone())
                        .unwrap_or_default();
                    (
                        503,
                        "text/plain",
                        format!("not ready: phase {}; {why}\n", s.phase),
                    )
                }
            }
            "/status" => {
                let mut value = serde_json::to_value(self.snapshot()).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.insert(
                        "uptime-s".into(),
                        serde_json::json!(self.started.elapsed().as_secs_f64()),
                    );
                }
                (200, "application/json", format!("{value}\n"))
            }
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics_text(),
            ),
            _ => (
                404,
                "text/plain",
                "not found: try /livez, /readyz, /status, /metrics\n".into(),
            ),
        }
    }
}

/// A future answering a POST: the status code and a JSON body.
pub(crate) type PostAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u16, String)> + Send>>;

/// More routes on the endpoints' port, taking a JSON body: the native
/// backend's rendezvous on the leader.
pub trait PostRoutes: Send + Sync {
    /// The answer to `POST path` with `body`, or `None` for a path it
    /// does not serve.
    fn post(&self, path: &str, body: Bytes) -> Option<PostAnswer>;
}

/// Serves the endpoints on `address` until the task is dropped.
pub async fn serve_endpoints(
    address: SocketAddr,
    status: Arc<Status>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_endpoints_with(address, status, None).await
}

/// The largest POST body read (the native backend's messages).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a POST body may take to arrive.
pub(crate) const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub use conn::{
    HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES, MAX_PER_PEER,
};

/// [`serve_endpoints`], with `routes` answering POST requests (bodies up
/// to [`MAX_BODY`]). Connections, heads and idle time are bounded (see
/// [`MAX_CONNECTIONS`], [`MAX_HEADER_BYTES`], [`IDLE_TIMEOUT`]).
pub(crate) async fn serve_endpoints_with(
    address: SocketAddr,
    status: Arc<Status>,
    routes: Option<Arc<dyn PostRoutes>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "endpoints: /livez /readyz /status /metrics");
    let serve: conn::Serve = Arc::new(move |io| {
        let status = Arc::clone(&status);
        let routes = routes.clone();
        Box::pin(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let status = Arc::clone(&status);
                let routes = routes.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if req.method() == hyper::Method::GET
                        && orchestrator_weights::PeerService::serves(&path)
                    {
                        return Ok(weights_answer(&status, &req).await);
                    }
                    let (code, kind, body) = match (req.method(), routes) {
                        (&hyper::Method::POST, Some(routes)) => {
                            post(routes.as_ref(), &path, req.into_body()).await
                        }
                        _ => status.respond(&path),
                    };
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", kind)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default();
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(conn::HEADER_READ_TIMEOUT)
                .max_header_size(conn::MAX_HEADER_BYTES)
                .max_buf_size(conn::MAX_HEADER_BYTES.max(8192) * 2)
                .serve_connection(io, service)
                .await;
        })
    });
    Ok(tokio::spawn(conn::accept_loop(listener, serve)))
}

/// A GET of `[serve.weights]`'s chunks, offers or introductions, from
/// this node's peer service (404 when it offers none).
async fn weights_answer<B>(status: &Status, req: &Request<B>) -> Response<Full<Bytes>> {
    use orchestrator_weights::peer::{ANSWER_HEADER, REQUEST_HEADER};
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let auth = req
        .headers()
        .get(REQUEST_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(service) = status.weights_service.get() else {
        return Response::builder()
            .status(404)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"no weights offered here\n")))
            .unwrap_or_default();
    };
    let answer = service.answer(&target, auth).await;
    let mut response = Response::builder()
        .status(answer.status)
        .header("content-type", answer.content_type);
    if let Some(mac) = answer.mac {
        response = response.header(ANSWER_HEADER, mac);
    }
    response
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_default()
}

/// A POST to `routes`: the body read within the limit, then answered.
async fn post(
    routes: &dyn PostRoutes,
    path: &str,
    body: hyper::body::Incoming,
) -> (u16, &'static str, String) {
    use http_body_util::BodyExt;
    let limit = MAX_BODY;
    // A body trickled in byte by byte does not hold the connection.
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    );
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Err(_) => {
            return (
                408,
                "text/plain",
                format!(
                    "the request body did not arrive within {} s\n",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            );
        }
        Ok(Err(_)) => {
            return (
                413,
                "text/plain",
                format!("the request body is over {limit} bytes or broken\n"),
            );
        }
    };
    match routes.post(path, bytes) {
        Some(answer) => {
            let (code, body) = answer.await;
            (code, "application/json", body)
        }
        None => (404, "text/plain", format!("not found: POST {path}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_domain::{ExitStatus, ServerStage, StartupFailure};

    fn failure(rank: u32, exception: &str) -> StartupFailure {
        StartupFailure {
            rank,
            node: format!("10.0.0.{rank}"),
            stage: ServerStage::ImportsDone,
            exit: ExitStatus {
                code: Some(1),
                signal: None,
            },
            exception: Some(exception.into()),
            last_lines: vec!["ValueError: x".into()],
            at_unix_ms: u64::from(rank),
            identical: 1,
        }
    }

    #[test]
    fn failures_are_counted_per_attempt_and_the_first_is_kept() {
        let status = Status::new();
        let mut events = status.subscribe_events();
        status.startup_failed(failure(1, "ValueError: x"));
        // Rank 0 of the same attempt: not a second failure.
        status.startup_failed(failure(0, "ValueError: x"));
        let s = status.snapshot();
        assert_eq!(
            s.last_failure.as_ref().map(|f| (f.rank, f.identical)),
            Some((1, 1))
        );
        status.restarted();
        status.startup_failed(failure(0, "ValueError: x"));
        let s = status.snapshot();
        assert_eq!(
            s.last_failure.as_ref().map(|f| (f.rank, f.identical)),
            Some((0, 2))
        );
        assert_eq!(s.first_failure.as_ref().map(|f| f.rank), Some(1));
        status.restarted();
        status.startup_failed(failure(0, "RuntimeError: other"));
        let s = status.snapshot();
        assert_eq!(s.last_failure.as_ref().map(|f| f.identical), Some(1));
        assert_eq!(s.first_failure.as_ref().map(|f| f.rank), Some(1));
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["first-failure"]["exception"], "ValueError: x");
        assert_eq!(json["last-failure"]["exception"], "RuntimeError: other");
        let mut reasons = Vec::new();
        while let Ok(e) = events.try_recv() {
            reasons.push((e.reason, e.message));
        }
        let failed: Vec<_> = reasons
            .iter()
            .filter(|(r, _)| *r == EventReason::StartupFailed)
            .collect();
        assert_eq!(failed.len(), 3, "{reasons:?}");
        assert!(failed[1].1.ends_with("(2 times in a row)"), "{reasons:?}");
    }
}
