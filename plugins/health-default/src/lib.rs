//! Built-in health policy `default`.
//!
//! - The server exited (with any code: vLLM exits 0 even after its engine
//!   died): `restart` with exponential backoff, up to `max-restarts`; then
//!   `shutdown` with exit code 1 so Kubernetes restarts the pod.
//! - A node the server was launched on died: `restart` (same limit).
//! - A node the server was launched on turned unhealthy (its own
//!   node-health check): `restart` (same limit). The new server is
//!   launched on the usable nodes only, so the same node does not restart
//!   it again.
//! - Still loading longer than `startup-timeout-ms`: `restart`.
//! - One failed probe: `degraded`; `restart-after-failures` failed probes in
//!   a row: `restart`.
//! - Otherwise `healthy`.
//!
//! Parameters (all optional): `max-restarts` (5), `backoff-ms` (1000),
//! `max-backoff-ms` (30000), `restart-after-failures` (3),
//! `startup-timeout-ms` (1800000; 0 = none).

use orchestrator_plugin_sdk::health::*;

/// The `default` policy.
pub struct DefaultHealth;

struct Settings {
    max_restarts: u32,
    backoff_ms: u32,
    max_backoff_ms: u32,
    restart_after_failures: u32,
    startup_timeout_ms: u32,
}

impl Settings {
    fn from(params: &Params) -> Result<Self, orchestrator_plugin_sdk::ParamError> {
        Ok(Self {
            max_restarts: params.u32_or("max-restarts", 5)?,
            backoff_ms: params.u32_or("backoff-ms", 1000)?,
            max_backoff_ms: params.u32_or("max-backoff-ms", 30_000)?,
            restart_after_failures: params.u32_or("restart-after-failures", 3)?.max(1),
            startup_timeout_ms: params.u32_or("startup-timeout-ms", 1_800_000)?,
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

fn describe_probe(p: &ProbeResult) -> String {
    match (&p.error, p.status_code) {
        (Some(e), _) => e.clone(),
        (None, Some(code)) => format!("HTTP {code}"),
        (None, None) => "no answer".to_string(),
    }
}

orchestrator_plugin_sdk::export_health_policy!(DefaultHealth);
