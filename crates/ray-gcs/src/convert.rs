//! From Ray's `GcsNodeInfo` to the policy contract's `node`.

use crate::proto::GcsNodeInfo;
use crate::proto::gcs_node_info::GcsNodeState;
use orchestrator_domain::{KeyValue, Node, ResourceAmount, Resources};

/// Converts one GCS node record. Ray's per-node `node:<ip>` markers are
/// dropped from the custom resources (`address` and `is-head` carry them).
pub fn node_from_proto(info: &GcsNodeInfo) -> Node {
    let mut resources = Resources::default();
    let mut custom = Vec::new();
    for (name, amount) in &info.resources_total {
        match name.as_str() {
            "CPU" => resources.cpu = *amount,
            "GPU" => resources.gpu = *amount,
            "memory" => resources.memory_bytes = *amount as u64,
            "object_store_memory" => resources.object_store_memory_bytes = *amount as u64,
            other if other.starts_with("node:") => {}
            other => custom.push(ResourceAmount {
                name: other.to_string(),
                amount: *amount,
            }),
        }
    }
    custom.sort_by(|a, b| a.name.cmp(&b.name));
    resources.custom = custom;
    let mut labels: Vec<KeyValue> = info
        .labels
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    labels.sort_by(|a, b| a.key.cmp(&b.key));
    Node {
        id: hex::encode(&info.node_id),
        address: info.node_manager_address.clone(),
        hostname: info.node_manager_hostname.clone(),
        is_head: info.is_head_node,
        alive: info.state == GcsNodeState::Alive as i32,
        resources,
        labels,
        start_time_ms: info.start_time_ms,
        health: Default::default(),
    }
}
