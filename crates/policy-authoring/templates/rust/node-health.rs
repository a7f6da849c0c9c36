//! {{name}}: a node-health policy (world `node-health` of
//! `ray-orchestrator:policy@0.2.0`), run on every node at the probe
//! interval. Unhealthy on any critical XID, else healthy.
//!
//! The answer is `NodeVerdict::Healthy`, `Degraded(why)` (shown, still
//! used) or `Unhealthy(why)` (not counted toward readiness; the server is
//! moved off the node; a worker exits 3 after its grace).

use orchestrator_plugin_sdk::node_health::*;

/// The policy.
pub struct Policy;

impl NodeHealthPolicy for Policy {
    fn judge(readings: &NodeReadings, _params: &Params) -> NodeVerdict {
        for gpu in &readings.gpus {
            if let Some(event) = gpu.xids.last() {
                return NodeVerdict::Unhealthy(format!("GPU {} XID {}", gpu.index, event.xid));
            }
        }
        NodeVerdict::Healthy
    }
}

orchestrator_plugin_sdk::export_node_health_policy!(Policy);
