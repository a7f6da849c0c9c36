//! Built-in health policy `default` (contract 0.3.0).
//!
//! - The server failed to start `stop-after-identical-failures` times in a
//!   row with the same cause (same stage, same exception, numbers aside):
//!   `shutdown` with exit code 1 and the cause, since another restart
//!   would fail the same way; the pod's termination message says why.
//! - The server exited (with any code: vLLM exits 0 even after its engine
//!   died): `restart` with exponential backoff, up to `max-restarts`; then
//!   `shutdown` with exit code 1 so Kubernetes restarts the pod.
//! - A rank stalled (stayed in one start stage past its deadline; its
//!   stacks are in `/status`): what `on-stall` says: `restart` (the
//!   default, within `max-restarts`), `wait` (degraded) or `stop`.
//! - A node the server was launched on died: `restart` (same limit).
//! - A node the server was launched on turned unhealthy (its own
//!   node-health check): `restart` (same limit). The new server is
//!   launched on the usable nodes only, so the same node does not restart
//!   it again.
//! - Still loading longer than `startup-timeout-ms` (off by default: the
//!   stage deadlines catch a stuck start): `restart`.
//! - One failed probe: `degraded`; `restart-after-failures` failed probes in
//!   a row: `restart`.
//! - Otherwise `healthy`.
//!
//! Parameters (all optional): `max-restarts` (5), `backoff-ms` (1000),
//! `max-backoff-ms` (30000), `restart-after-failures` (3),
//! `startup-timeout-ms` (0 = none), `stop-after-identical-failures` (3; 0 =
//! never), `on-stall` (`restart`, `wait` or `stop`).

use orchestrator_plugin_sdk::health::*;

/// The `default` policy.
pub struct DefaultHealth;

struct Settings {
    max_restarts: u32,
    backoff_ms: u32,
    max_backoff_ms: u32,
    restart_after_failures: u32,
    startup_timeout_ms: u32,
    stop_after_identical: u32,
    on_stall: OnStall,
}

/// What to do about a stalled start.
#[derive(Clone, Copy, PartialEq)]
enum OnStall {
    Restart,
    Wait,
    Stop,
}

impl Settings {
    fn from(params: &Params) -> Result<Self, orchestrator_plugin_sdk::ParamError> {
        Ok(Self {
            max_restarts: params.u32_or("max-restarts", 5)?,
            backoff_ms: params.u32_or("backoff-ms", 1000)?,
            max_backoff_ms: params.u32_or("max-backoff-ms", 30_000)?,
            restart_after_failures: params.u32_or("restart-after-failures", 3)?.max(1),
            startup_timeout_ms: params.u32_or("startup-timeout-ms", 0)?,
            stop_after_identical: params.u32_or("stop-after-identical-failures", 3)?,
            on_stall: match params.str_or("on-stall", "restart") {
                "restart" => OnStall::Restart,
                "wait" => OnStall::Wait,
                "stop" => OnStall::Stop,
                other => {
                    return Err(orchestrator_plugin_sdk::ParamError {
                        key: "on-stall".to_string(),
                        value: Some(other.to_string()),
                        expected: "restart, wait or stop",
                    });
                }
            },
        })
    }

    /// `restart` while restarts remain, else `shutdown(1)`.
    fn restart_or_give_up(&self, snapshot: &HealthSnapshot, reason: String) -> HealthVerdict {
        if snapshot.restarts >= self.max_restarts {
            return HealthVerdict::Shutdown(ShutdownAction {
                exit_code: 1,
                reason: format!(
                    "{reason}; giving up after {} restarts (max-restarts = {})",
                    snapshot.restarts, self.max_restarts
                ),
            });
        }
        let factor = 1u64 << snapshot.restarts.min(20);
        let backoff = (u64::from(self.backoff_ms) * factor).min(u64::from(self.max_backoff_ms));
        HealthVerdict::Restart(RestartAction {
            reason,
            backoff_ms: backoff as u32,
        })
    }
}

impl HealthPolicy for DefaultHealth {
    fn evaluate(snapshot: &HealthSnapshot, cluster: &Cluster, params: &Params) -> HealthVerdict {
        let settings = match Settings::from(params) {
            Ok(s) => s,
            Err(e) => {
                return HealthVerdict::Shutdown(ShutdownAction {
                    exit_code: 2,
                    reason: e.to_string(),
                });
            }
        };

        // A start that failed the same way again and again (whether its
        // rank's exit shows as the server's exit or as its node's death):
        // another restart fails too.
        if let Some(failure) = &snapshot.last_failure
            && settings.stop_after_identical > 0
            && failure.identical >= settings.stop_after_identical
        {
            return HealthVerdict::Shutdown(ShutdownAction {
                exit_code: 1,
                reason: format!(
                    "the server failed to start {} times in a row with the same cause, so another restart would too: {} (stop-after-identical-failures = {})",
                    failure.identical,
                    describe_failure(failure),
                    settings.stop_after_identical
                ),
            });
        }

        if let ServerState::Exited(status) = &snapshot.server {
            let how = match (status.code, status.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "exited".to_string(),
            };
            return settings.restart_or_give_up(snapshot, format!("serving process {how}"));
        }

        let lost: Vec<String> = cluster
            .nodes()
            .filter(|n| !n.alive() && n.serving())
            .map(|n| format!("{} ({})", n.short_id(), n.name()))
            .collect();
        if !lost.is_empty() {
            return settings.restart_or_give_up(
                snapshot,
                format!("node the server runs on died: {}", lost.join(", ")),
            );
        }

        let sick: Vec<String> = cluster
            .nodes()
            .filter(|n| n.alive() && n.serving() && !n.usable())
            .map(|n| format!("{} ({}): {}", n.name(), n.address(), n.health_reason()))
            .collect();
        if !sick.is_empty() {
            return settings.restart_or_give_up(
                snapshot,
                format!("node the server runs on is unhealthy: {}", sick.join("; ")),
            );
        }

        if let Some(stall) = &snapshot.stall {
            let what = describe_stall(stall);
            return match settings.on_stall {
                OnStall::Restart => settings.restart_or_give_up(snapshot, what),
                OnStall::Wait => HealthVerdict::Degraded(what),
                OnStall::Stop => HealthVerdict::Shutdown(ShutdownAction {
                    exit_code: 1,
                    reason: format!("{what} (on-stall = stop)"),
                }),
            };
        }

        if matches!(snapshot.server, ServerState::Starting) {
            if settings.startup_timeout_ms > 0
                && snapshot.server_uptime_ms > u64::from(settings.startup_timeout_ms)
            {
                return settings.restart_or_give_up(
                    snapshot,
                    format!(
                        "server still not healthy after {} ms (startup-timeout-ms = {})",
                        snapshot.server_uptime_ms, settings.startup_timeout_ms
                    ),
                );
            }
            return HealthVerdict::Degraded(format!(
                "server starting (model loading) for {} ms",
                snapshot.server_uptime_ms
            ));
        }

        let failures = snapshot.consecutive_probe_failures;
        if failures > 0 {
            let last = [&snapshot.generation_probe, &snapshot.health_probe]
                .into_iter()
                .flatten()
                .filter(|p| !p.ok)
                .min_by_key(|p| p.age_ms)
                .map(describe_probe)
                .unwrap_or_else(|| "probe failed".to_string());
            if failures >= settings.restart_after_failures {
                return settings.restart_or_give_up(
                    snapshot,
                    format!("{failures} failed probes in a row; last: {last}"),
                );
            }
            return HealthVerdict::Degraded(format!(
                "{failures} failed probe{} in a row; last: {last}",
                if failures == 1 { "" } else { "s" }
            ));
        }

        HealthVerdict::Healthy
    }
}

fn describe_failure(f: &StartupFailure) -> String {
    let how = match (f.exit_code, f.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "could not be started".to_string(),
    };
    let why = f
        .exception
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!(
        "rank {}'s server on {} {how} after stage {}{why}",
        f.rank,
        f.node,
        stage_name(f.stage)
    )
}

fn describe_stall(s: &Stall) -> String {
    let frame = s
        .top_frames
        .first()
        .map(|f| format!("; innermost frame {f}"))
        .unwrap_or_default();
    format!(
        "rank {}'s server on {} stalled after stage {} for {} s (deadline {} s){frame}",
        s.rank,
        s.node,
        stage_name(s.stage),
        s.stalled_ms / 1000,
        s.deadline_ms / 1000
    )
}

fn stage_name(stage: ServerStage) -> &'static str {
    match stage {
        ServerStage::ProcessUp => "process-up",
        ServerStage::ImportsDone => "imports-done",
        ServerStage::DistributedInit => "distributed-init",
        ServerStage::WeightsLoaded => "weights-loaded",
        ServerStage::KvCacheAllocated => "kv-cache-allocated",
        ServerStage::ApiUp => "api-up",
        ServerStage::WarmedUp => "warmed-up",
    }
}

fn describe_probe(p: &ProbeResult) -> String {
    match (&p.error, p.status_code) {
        (Some(e), _) => e.clone(),
        (None, Some(code)) => format!("HTTP {code}"),
        (None, None) => "no answer".to_string(),
    }
}

orchestrator_plugin_sdk::export_health_policy!(DefaultHealth);
