//! Packs every node into a [`NodeTable`]: rows of 64-bit words (lowered
//! into the plugin as one copy per list) and one text. A label key, label
//! value or resource name equal to the previous node's at the same
//! position is not written again (nodes of one group carry the same
//! labels), so the text grows mostly with ids and names. The layout is
//! documented on `node-table` in `wit/policy-0.2.0/types.wit`.
//!
//! Entry point: [`encode`].

use super::bindings::types::NodeTable;
use super::cluster::ClusterInput;

/// Words per node row.
pub(crate) const WORDS_PER_NODE: usize = 13;

/// Row flags (word 3).
const HEAD: u64 = 1;
const ALIVE: u64 = 2;
const SERVING: u64 = 4;

/// A span word: `start << 32 | len`.
fn span(start: usize, len: usize) -> u64 {
    let start = u64::try_from(start)
        .unwrap_or(u64::from(u32::MAX))
        .min(u64::from(u32::MAX));
    let len = u64::try_from(len).unwrap_or(0).min(u64::from(u32::MAX));
    (start << 32) | len
}

fn text_of(text: &str, word: u64) -> Option<&str> {
    let start = (word >> 32) as usize;
    let len = (word & 0xffff_ffff) as usize;
    text.get(start..start.checked_add(len)?)
}

/// Appends `s` to `text` and returns its span.
fn push(text: &mut String, s: &str) -> u64 {
    let start = text.len();
    text.push_str(s);
    span(start, s.len())
}

/// `s`'s span: `previous` when it already holds the same text, else `s`
/// appended.
fn reuse_or_push(text: &mut String, previous: Option<u64>, s: &str) -> u64 {
    match previous {
        Some(p) if text_of(text, p) == Some(s) => p,
        _ => push(text, s),
    }
}

/// Every node of `input`, packed.
pub(crate) fn encode(input: &ClusterInput) -> NodeTable {
    let nodes = input.nodes();
    let mut text = String::with_capacity(nodes.len() * 112);
    let mut rows: Vec<u64> = Vec::with_capacity(nodes.len() * WORDS_PER_NODE);
    let mut labels: Vec<u64> = Vec::with_capacity(nodes.len() * 4);
    let mut resources: Vec<u64> = Vec::with_capacity(nodes.len() * 2);
    // Where the previous node's label and resource rows start (in words).
    let (mut prev_labels, mut prev_resources) = (0usize, 0usize);
    for node in nodes {
        let id = push(&mut text, &node.id);
        let address = push(&mut text, &node.address);
        let hostname = push(&mut text, &node.hostname);

        let first_label = labels.len();
        for (i, kv) in node.labels.iter().enumerate() {
            let at = prev_labels + 2 * i;
            let previous = |k: usize| (at + k < first_label).then(|| labels[at + k]);
            let (pk, pv) = (previous(0), previous(1));
            let key = reuse_or_push(&mut text, pk, &kv.key);
            let value = reuse_or_push(&mut text, pv, &kv.value);
            labels.extend([key, value]);
        }
        prev_labels = first_label;

        let first_resource = resources.len();
        for (i, r) in node.resources.custom.iter().enumerate() {
            let at = prev_resources + 2 * i;
            let previous = (at < first_resource).then(|| resources[at]);
            let name = reuse_or_push(&mut text, previous, &r.name);
            resources.extend([name, r.amount.to_bits()]);
        }
        prev_resources = first_resource;

        let flags = if node.is_head { HEAD } else { 0 }
            | if node.alive { ALIVE } else { 0 }
            | if input.is_serving(node) { SERVING } else { 0 };
        rows.extend([
            id,
            address,
            hostname,
            flags,
            node.resources.cpu.to_bits(),
            node.resources.gpu.to_bits(),
            node.resources.memory_bytes,
            node.resources.object_store_memory_bytes,
            node.start_time_ms,
            span(first_label / 2, node.labels.len()),
            span(first_resource / 2, node.resources.custom.len()),
            node.health.state.code(),
            push(&mut text, &node.health.reason),
        ]);
    }
    NodeTable {
        words_per_node: WORDS_PER_NODE as u32,
        nodes: rows,
        labels,
        resources,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_domain::{ClusterSnapshot, KeyValue, Node, ResourceAmount, Resources};
    use std::sync::Arc;

    fn node(i: u32, group: &str) -> Node {
        Node {
            id: format!("{i:056x}"),
            address: format!("10.0.0.{i}"),
            hostname: format!("pod-{i}"),
            alive: i != 1,
            is_head: i == 0,
            resources: Resources {
                gpu: f64::from(i),
                custom: vec![ResourceAmount {
                    name: "accelerator_type:A100".into(),
                    amount: 1.0,
                }],
                ..Resources::default()
            },
            labels: vec![KeyValue::new("group", group), KeyValue::new("zone", "a")],
            ..Node::default()
        }
    }

    #[test]
    fn rows_point_at_their_text_and_repeated_labels_are_written_once() {
        let snapshot = ClusterSnapshot {
            nodes: vec![node(0, "head"), node(1, "gpu"), node(2, "gpu")],
            ..ClusterSnapshot::default()
        };
        let input = ClusterInput::new(Arc::new(snapshot));
        let t = encode(&input);
        assert_eq!(t.nodes.len(), 3 * WORDS_PER_NODE);
        let row = |i: usize| &t.nodes[i * WORDS_PER_NODE..][..WORDS_PER_NODE];
        assert_eq!(text_of(&t.text, row(2)[2]), Some("pod-2"));
        assert_eq!(row(1)[3], 0, "worker 1 is dead");
        assert_eq!(row(0)[3], HEAD | ALIVE);
        assert_eq!(f64::from_bits(row(2)[5]), 2.0);
        // Node 2's labels: rows 4 and 5, the same spans as node 1's.
        assert_eq!(row(2)[9], span(4, 2));
        assert_eq!(t.labels[8..12], t.labels[4..8]);
        assert_eq!(text_of(&t.text, t.labels[9]), Some("gpu"));
        // Node 1's "gpu" differs from the head's "head": written anew.
        assert_ne!(t.labels[5], t.labels[1]);
        assert_eq!(t.text.matches("zone").count(), 1);
        assert_eq!(t.text.matches("accelerator_type:A100").count(), 1);
        assert_eq!(f64::from_bits(t.resources[5]), 1.0);
    }
}
