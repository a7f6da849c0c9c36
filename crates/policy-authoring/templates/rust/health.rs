//! {{name}}: a health policy (world `health` of
//! `ray-orchestrator:policy@0.3.0`). Restarts the serving process when it
//! exited (after `backoff-ms`, default 1000), else healthy. The snapshot
//! also tells how the server's start goes rank by rank: `stages`, `stall`
//! (a rank past its stage's deadline) and `last_failure` (a start that
//! ended in an exit, with `identical`: failures in a row with its cause).
//!
//! The answer is `HealthVerdict::Healthy`, `Degraded(why)`,
//! `Restart(RestartAction { reason, backoff_ms })` or
//! `Shutdown(ShutdownAction { exit_code, reason })` (the orchestrator
//! stops and exits with that code, so Kubernetes restarts the pod).

use orchestrator_plugin_sdk::health::*;

/// The policy.
pub struct Policy;

impl HealthPolicy for Policy {
    fn evaluate(snapshot: &HealthSnapshot, _cluster: &Cluster, params: &Params) -> HealthVerdict {
        let backoff_ms = match params.u32_or("backoff-ms", 1000) {
            Ok(ms) => ms,
            Err(e) => {
                return HealthVerdict::Shutdown(ShutdownAction {
                    exit_code: 2,
                    reason: e.to_string(),
                });
            }
        };
        if let ServerState::Exited(_) = snapshot.server {
            return HealthVerdict::Restart(RestartAction {
                reason: "the serving process exited".to_string(),
                backoff_ms,
            });
        }
        HealthVerdict::Healthy
    }
}

orchestrator_plugin_sdk::export_health_policy!(Policy);
