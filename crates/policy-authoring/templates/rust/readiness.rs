//! {{name}}: a readiness policy (world `readiness` of
//! `ray-orchestrator:policy@0.2.0`). Ready when every expected node is
//! alive. Parameter `nodes` (default: the expected node count) overrides
//! how many must be.
//!
//! The answer is `Readiness::Ready`, `Readiness::Wait(why)` (ask again at
//! the next membership change) or `Readiness::Fail(why)` (stop waiting).

use orchestrator_plugin_sdk::readiness::*;

/// The policy.
pub struct Policy;

impl ReadinessPolicy for Policy {
    fn check(cluster: &Cluster, params: &Params) -> Readiness {
        let want = match params.u32_or("nodes", cluster.expected().nodes) {
            Ok(n) => n,
            Err(e) => return Readiness::Fail(e.to_string()),
        };
        // Counted by the host, without copying the nodes.
        let alive = cluster.count(&Filter::alive());
        if alive >= want {
            Readiness::Ready
        } else {
            Readiness::Wait(format!("{alive} of {want} nodes alive"))
        }
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(Policy);
