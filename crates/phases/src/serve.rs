//! The serve phase: launch the serving process from the launch policy's
//! plan, then keep judging its health and the cluster's with the health
//! policy, and carry out what it says.
//!
//! Every event — a probe result, the server's exit, a node's death or join
//! pushed by the GCS, the health interval — builds a health snapshot and
//! calls the policy. Probes run as their own tasks, so a slow generation
//! probe never delays the reaction to a dead node or an exited server.

use crate::probe;
use crate::server::ServerProcess;
use crate::signals::Shutdown;
use crate::status::Status;
use orchestrator_policy_host::Plugin;
use orchestrator_policy_host::types::{
    ExitStatus, HealthSnapshot, HealthVerdict, KeyValue, LaunchPlan, Node, NodeChange,
    NodeChangeKind, ProbeResult, ServerState,
};
use orchestrator_ray_gcs::{MembershipChange, watch_membership};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How to serve and how to watch.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The launch policy's plan.
    pub plan: LaunchPlan,
    /// Where to probe the server, `HOST:PORT`.
    pub probe_address: String,
    /// The model name the generation probe asks for.
    pub model: String,
    /// How often `/health` is probed (and the policy asked).
    pub health_interval: Duration,
    /// How often a one-token completion is sent.
    pub generation_interval: Duration,
    /// Timeout of a `/health` probe.
    pub health_timeout: Duration,
    /// Timeout of a generation probe.
    pub generation_timeout: Duration,
    /// Grace period between SIGTERM and SIGKILL when stopping the server.
    pub stop_grace: Duration,
    /// The GCS to follow for node deaths and joins.
    pub gcs_address: String,
    /// The health policy's parameters.
    pub params: Vec<KeyValue>,
    /// The nodes alive when the cluster became ready (the server's nodes).
    pub nodes: Vec<Node>,
    /// When the readiness policy said ready, to log how soon after it the
    /// server was started.
    pub ready_at: Option<Instant>,
}

/// How the serve phase ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ServeOutcome {
    /// A stop was requested (SIGTERM/SIGINT); the server was drained.
    Stopped,
    /// The health policy said shut down.
    Shutdown {
        /// The exit code it asked for.
        exit_code: i32,
        /// Why.
        reason: String,
    },
}

enum ProbeKind {
    Health,
    Generation,
}

struct Probes {
    health: Option<(ProbeResult, Instant)>,
    generation: Option<(ProbeResult, Instant)>,
    health_failures: u32,
    generation_failures: u32,
    health_in_flight: bool,
    generation_in_flight: bool,
    last_generation: Option<Instant>,
}

impl Probes {
    fn new() -> Self {
        Self {
            health: None,
            generation: None,
            health_failures: 0,
            generation_failures: 0,
            health_in_flight: false,
            generation_in_flight: false,
            last_generation: None,
        }
    }

    fn aged(slot: &Option<(ProbeResult, Instant)>) -> Option<ProbeResult> {
        slot.as_ref().map(|(p, at)| ProbeResult {
            age_ms: at.elapsed().as_millis() as u64,
            ..p.clone()
        })
    }
}

fn ids_alive(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.id.clone())
        .collect()
}

fn verdict_name(v: &HealthVerdict) -> &'static str {
    match v {
        HealthVerdict::Healthy => "healthy",
        HealthVerdict::Degraded(_) => "degraded",
        HealthVerdict::Restart(_) => "restart",
        HealthVerdict::Shutdown(_) => "shutdown",
    }
}

/// Runs the serve phase until a stop is requested or the health policy says
/// shut down. The server is always stopped before this returns.
pub async fn serve(
    spec: &ServeSpec,
    policy: &mut Plugin,
    status: &Status,
    shutdown: &Shutdown,
) -> ServeOutcome {
    let env: Vec<(String, String)> = spec
        .plan
        .env
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let phase_start = Instant::now();
    let mut membership = watch_membership(spec.gcs_address.clone());
    let mut nodes = spec.nodes.clone();
    let mut server_nodes = ids_alive(&nodes);
    let mut changes: Vec<NodeChange> = Vec::new();
    let mut restarts = 0u32;
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(ProbeKind, ProbeResult)>();
    let mut last_logged: Option<(&'static str, Instant)> = None;
    let mut tick = tokio::time::interval(spec.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    'launch: loop {
        let before_spawn_us = spec.ready_at.map(|t| t.elapsed().as_micros() as u64);
        let mut server = match ServerProcess::spawn("vllm", &spec.plan.argv, &env) {
            Ok(s) => {
                if let (Some(ready_at), 0) = (spec.ready_at, restarts) {
                    tracing::info!(
                        after_us = ready_at.elapsed().as_micros() as u64,
                        exec_called_after_us = before_spawn_us.unwrap_or(0),
                        "serving process started after the ready decision"
                    );
                }
                Some(s)
            }
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        };
        status.server_pid(server.as_ref().and_then(ServerProcess::pid));
        let launched = Instant::now();
        let mut exited: Option<ExitStatus> = if server.is_none() {
            Some(ExitStatus::default())
        } else {
            None
        };
        let mut running = false;
        let mut probes = Probes::new();
        // Results of probes of a previous server are dropped.
        while probe_rx.try_recv().is_ok() {}

        loop {
            let mut evaluate = false;
            tokio::select! {
                () = shutdown.requested() => {
                    status.enter("stopping");
                    if let Some(s) = server.as_mut() {
                        let pid = s.pid();
                        tokio::select! {
                            how = s.stop(spec.stop_grace) => tracing::info!(?how, "serving process stopped"),
                            () = shutdown.forced() => {
                                if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
                                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                                }
                                tracing::warn!("serving process killed");
                            }
                        }
                    }
                    return ServeOutcome::Stopped;
                }
                how = async { match server.as_mut() { Some(s) => s.wait().await, None => std::future::pending().await } }, if exited.is_none() => {
                    tracing::warn!(code = ?how.code, signal = ?how.signal, "serving process exited");
                    exited = Some(how);
                    status.server_pid(None);
                    evaluate = true;
                }
                update = membership.recv() => {
                    if let Some(update) = update {
                        for change in &update.changes {
                            let (kind, node) = match change {
                                MembershipChange::Joined(n) => (NodeChangeKind::Joined, n),
                                MembershipChange::Died { node, .. } => (NodeChangeKind::Died, node),
                            };
                            if kind == NodeChangeKind::Died {
                                tracing::warn!(node = %node.id.get(..8).unwrap_or(&node.id), address = %node.address, "node died during serving");
                            }
                            changes.push(NodeChange { node_id: node.id.clone(), kind });
                            evaluate = true;
                        }
                        if !update.view.nodes.is_empty() {
                            nodes = update.view.nodes;
                            let alive = nodes.iter().filter(|n| n.alive).count() as u32;
                            status.nodes(alive, status.snapshot().nodes_expected);
                        }
                    }
                }
                Some((kind, result)) = probe_rx.recv() => {
                    let now = Instant::now();
                    match kind {
                        ProbeKind::Health => {
                            probes.health_in_flight = false;
                            if result.ok {
                                probes.health_failures = 0;
                                if !running {
                                    running = true;
                                    tracing::info!(after_ms = launched.elapsed().as_millis() as u64, "serving process answers /health");
                                }
                            } else if running {
                                probes.health_failures += 1;
                            }
                            probes.health = Some((result, now));
                        }
                        ProbeKind::Generation => {
                            probes.generation_in_flight = false;
                            if result.ok {
                                probes.generation_failures = 0;
                            } else {
                                probes.generation_failures += 1;
                                tracing::warn!(error = result.error.as_deref().unwrap_or(""), "generation probe failed");
                            }
                            probes.generation = Some((result, now));
                        }
                    }
                    evaluate = true;
                }
                _ = tick.tick() => {
                    evaluate = true;
                    if exited.is_none() && !probes.health_in_flight {
                        probes.health_in_flight = true;
                        let (tx, address, timeout) = (probe_tx.clone(), spec.probe_address.clone(), spec.health_timeout);
                        tokio::spawn(async move {
                            let _ = tx.send((ProbeKind::Health, probe::health(&address, timeout).await));
                        });
                    }
                    let due = probes.last_generation.is_none_or(|t| t.elapsed() >= spec.generation_interval);
                    if exited.is_none() && running && due && !probes.generation_in_flight {
                        probes.generation_in_flight = true;
                        probes.last_generation = Some(Instant::now());
                        let (tx, address, model, timeout) =
                            (probe_tx.clone(), spec.probe_address.clone(), spec.model.clone(), spec.generation_timeout);
                        tokio::spawn(async move {
                            let _ = tx.send((ProbeKind::Generation, probe::generation(&address, &model, timeout).await));
                        });
                    }
                }
            }
            if !evaluate {
                continue;
            }

            let snapshot = HealthSnapshot {
                server: match (&exited, running) {
                    (Some(how), _) => ServerState::Exited(how.clone()),
                    (None, true) => ServerState::Running,
                    (None, false) => ServerState::Starting,
                },
                server_uptime_ms: launched.elapsed().as_millis() as u64,
                health_probe: Probes::aged(&probes.health),
                generation_probe: Probes::aged(&probes.generation),
                consecutive_probe_failures: probes.health_failures.max(probes.generation_failures),
                nodes: nodes.clone(),
                server_nodes: server_nodes.clone(),
                changes: std::mem::take(&mut changes),
                restarts,
                uptime_ms: phase_start.elapsed().as_millis() as u64,
            };
            let started = Instant::now();
            let verdict = policy.evaluate(&snapshot, &spec.params);
            status.policy_call("health", started.elapsed().as_secs_f64());
            let verdict = match verdict {
                Ok(v) => v,
                Err(e) => {
                    // A broken health policy must not take a serving model
                    // down: report it and keep serving.
                    tracing::error!("health policy failed: {e}");
                    status.health("error", format!("health policy failed: {e}"), false);
                    continue;
                }
            };
            let name = verdict_name(&verdict);
            match verdict {
                HealthVerdict::Healthy => {
                    status.health(name, "healthy".into(), exited.is_none() && running)
                }
                HealthVerdict::Degraded(reason) => {
                    // Log a change of verdict at once, a lasting one every 30 s.
                    let due = last_logged
                        .as_ref()
                        .is_none_or(|(n, at): &(&str, Instant)| {
                            *n != name || at.elapsed() >= Duration::from_secs(30)
                        });
                    if due {
                        tracing::info!("degraded: {reason}");
                        last_logged = Some((name, Instant::now()));
                    }
                    status.health(name, reason, false);
                }
                HealthVerdict::Restart(action) => {
                    tracing::warn!(
                        backoff_ms = action.backoff_ms,
                        "restarting the serving process: {}",
                        action.reason
                    );
                    status.health(name, format!("restart: {}", action.reason), false);
                    status.restarted();
                    if let Some(s) = server.as_mut() {
                        let pid = s.pid();
                        tokio::select! {
                            _ = s.stop(spec.stop_grace) => {}
                            () = shutdown.forced() => {
                                if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
                                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                                }
                            }
                        }
                    }
                    status.server_pid(None);
                    if shutdown.is_requested() {
                        status.enter("stopping");
                        return ServeOutcome::Stopped;
                    }
                    restarts += 1;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(u64::from(action.backoff_ms))) => {}
                        () = shutdown.requested() => {
                            status.enter("stopping");
                            return ServeOutcome::Stopped;
                        }
                    }
                    server_nodes = ids_alive(&nodes);
                    continue 'launch;
                }
                HealthVerdict::Shutdown(action) => {
                    tracing::error!(
                        exit_code = action.exit_code,
                        "shutting down: {}",
                        action.reason
                    );
                    status.health(name, format!("shutdown: {}", action.reason), false);
                    status.enter("stopping");
                    if let Some(s) = server.as_mut() {
                        s.stop(spec.stop_grace).await;
                    }
                    return ServeOutcome::Shutdown {
                        exit_code: action.exit_code,
                        reason: action.reason,
                    };
                }
            }
        }
    }
}
