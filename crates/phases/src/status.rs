//! What the orchestrator reports about itself: `/livez`, `/readyz`,
//! `/status` (JSON) and `/metrics` (Prometheus text), on one port.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
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

/// The default port of the endpoints: clashes with none of Ray's (6379,
/// 8265, 8080, 52365) or vLLM's (8000).
pub const DEFAULT_PORT: u16 = 8471;

/// The orchestrator's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, EncodeLabelSet)]
#[serde(rename_all = "kebab-case")]
pub struct PhaseLabel {
    /// The phase's name.
    pub phase: &'static str,
}

/// Labels of a policy call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorldLabel {
    /// The policy world.
    pub world: &'static str,
}

/// Labels of a health verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerdictLabel {
    /// The verdict.
    pub verdict: &'static str,
}

/// Phases, in order.
pub const PHASES: &[&str] = &["start", "wait", "serve", "stopping", "failed"];

/// One entry of the phase history.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PhaseEntry {
    /// The phase.
    pub phase: &'static str,
    /// When it began, ms since the Unix epoch.
    pub since_ms: u64,
}

/// The state behind `/status` and `/readyz`.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct StatusState {
    /// The current phase.
    pub phase: &'static str,
    /// Every phase entered, in order.
    pub history: Vec<PhaseEntry>,
    /// Nodes alive / expected.
    pub nodes_alive: u32,
    /// Nodes expected.
    pub nodes_expected: u32,
    /// The readiness policy's last answer.
    pub last_readiness: Option<String>,
    /// The health policy's last verdict.
    pub last_health: Option<String>,
    /// Whether the serving process answers and the last verdict is healthy.
    pub ready: bool,
    /// Restarts of the serving process.
    pub restarts: u32,
    /// The serving process's pid, while it runs.
    pub server_pid: Option<i32>,
    /// Why expected nodes are missing, as the platform (Kubernetes) says,
    /// while the wait phase runs.
    pub diagnostics: Vec<String>,
    /// The last health verdict's name.
    #[serde(skip)]
    pub last_verdict: Option<&'static str>,
}

/// The kind of an [`OrchestratorEvent`], as Kubernetes Events have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    /// Progress.
    Normal,
    /// A failure, a restart, a degraded service.
    Warning,
}

/// Something a platform should record (as a Kubernetes Event on the pod):
/// a phase change, a failure, a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrchestratorEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// A short CamelCase reason, e.g. `ClusterReady`, `ServerRestarted`.
    pub reason: String,
    /// What happened, one line.
    pub message: String,
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
    events: Mutex<Option<tokio::sync::mpsc::Sender<OrchestratorEvent>>>,
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
        let status = Arc::new(Self {
            state: Mutex::new(StatusState::default()),
            started: Instant::now(),
            registry,
            phase,
            phase_seconds,
            nodes_alive,
            nodes_expected,
            policy_seconds,
            restarts,
            verdicts,
            events: Mutex::new(None),
        });
        status.enter("start");
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
    pub fn subscribe_events(&self) -> tokio::sync::mpsc::Receiver<OrchestratorEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        match self.events.lock() {
            Ok(mut slot) => *slot = Some(tx),
            Err(poisoned) => *poisoned.into_inner() = Some(tx),
        }
        rx
    }

    /// Ends the event stream: the subscriber gets what is queued, then the
    /// end.
    pub fn close_events(&self) {
        match self.events.lock() {
            Ok(mut slot) => *slot = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    /// Publishes an event to the subscriber, if any. Never blocks: a full
    /// queue drops it.
    pub fn event(&self, kind: EventKind, reason: &str, message: String) {
        let sender = match self.events.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(tx) = sender {
            let _ = tx.try_send(OrchestratorEvent {
                kind,
                reason: reason.to_string(),
                message,
            });
        }
    }

    /// Enters `phase`.
    pub fn enter(&self, phase: &'static str) {
        let (alive, expected, previous) = self.with(|s| {
            let previous = s.phase;
            s.phase = phase;
            s.phase = phase;
            s.history.push(PhaseEntry {
                phase,
                since_ms: now_ms(),
            });
            if phase != "serve" {
                s.ready = false;
            }
            if phase != "wait" {
                s.diagnostics.clear();
            }
            (s.nodes_alive, s.nodes_expected, previous)
        });
        if previous != phase {
            let (kind, reason, message) = match phase {
                "start" => (EventKind::Normal, "StartingRay", "starting Ray".to_string()),
                "wait" => (
                    EventKind::Normal,
                    "WaitingForCluster",
                    format!("waiting for the Ray cluster ({alive} of {expected} nodes alive)"),
                ),
                "serve" => (
                    EventKind::Normal,
                    "Serving",
                    format!("cluster ready ({alive} of {expected} nodes alive); serving"),
                ),
                "stopping" => (EventKind::Normal, "Stopping", "stopping".to_string()),
                // `fail` sends the failure's own event.
                _ => return,
            };
            self.event(kind, reason, message);
        }
        for p in PHASES {
            self.phase
                .get_or_create(&PhaseLabel { phase: p })
                .set(i64::from(*p == phase));
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
    pub fn policy_call(&self, world: &'static str, seconds: f64) {
        self.policy_seconds
            .get_or_create(&WorldLabel { world })
            .observe(seconds);
    }

    /// Enters phase `failed`, publishing a Warning event with `reason`
    /// (CamelCase) and `message`.
    pub fn fail(&self, reason: &str, message: String) {
        self.event(EventKind::Warning, reason, message);
        self.enter("failed");
    }

    /// Records why expected nodes are missing (shown by `/status`).
    pub fn diagnostics(&self, lines: Vec<String>) {
        self.with(|s| s.diagnostics = lines);
    }

    /// Records the readiness policy's answer.
    pub fn readiness(&self, answer: String) {
        self.with(|s| s.last_readiness = Some(answer));
    }

    /// Records a health verdict (`healthy`, `degraded`, `restart`,
    /// `shutdown`) and whether the service is ready to take traffic.
    /// A change of verdict is published as an event.
    pub fn health(&self, verdict: &'static str, text: String, ready: bool) {
        self.verdicts.get_or_create(&VerdictLabel { verdict }).inc();
        let changed = self.with(|s| {
            let changed = s.last_verdict != Some(verdict);
            s.last_verdict = Some(verdict);
            s.last_health = Some(text.clone());
            s.ready = ready;
            changed
        });
        if changed {
            let (kind, reason) = match verdict {
                "healthy" => (EventKind::Normal, "ServerHealthy"),
                "degraded" => (EventKind::Warning, "ServerDegraded"),
                "restart" => (EventKind::Warning, "ServerRestarting"),
                "shutdown" => (EventKind::Warning, "ShuttingDown"),
                _ => (EventKind::Warning, "HealthCheckFailed"),
            };
            self.event(kind, reason, text);
        }
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
            EventKind::Warning,
            "ServerRestarted",
            format!("the serving process was restarted (restart {n})"),
        );
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
                .get_or_create(&PhaseLabel { phase: entry.phase })
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

/// Serves the endpoints on `address` until the task is dropped.
pub async fn serve_endpoints(
    address: SocketAddr,
    status: Arc<Status>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "endpoints: /livez /readyz /status /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (code, kind, body) = status.respond(req.uri().path());
                    async move {
                        let response = Response::builder()
                            .status(code)
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}
