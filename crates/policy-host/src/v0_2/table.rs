//! Packs every node into a [`NodeTable`]: fixed-size rows and one text.
//! A label key, label value or resource name equal to the previous node's
//! at the same position is not written again (nodes of one group carry
//! the same labels), so the text grows mostly with ids and names.
//!
//! Entry point: [`encode`].

use super::bindings::types::{LabelRow, NodeRow, NodeTable, ResourceRow, Span};
use super::cluster::ClusterInput;

/// Appends `s` to `text` and returns its span.
fn push(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    span(start, s.len())
}

fn span(start: usize, len: usize) -> Span {
    Span {
        start: u32::try_from(start).unwrap_or(u32::MAX),
        len: u32::try_from(len).unwrap_or(0),
    }
}

fn get<'t>(text: &'t str, s: Span) -> Option<&'t str> {
    let start = s.start as usize;
    text.get(start..start.checked_add(s.len as usize)?)
}

/// `s`'s span: `previous` when it already holds the same text, else `s`
/// appended.
fn reuse_or_push(text: &mut String, previous: Option<Span>, s: &str) -> Span {
    match previous {
        Some(p) if get(text, p) == Some(s) => p,
        _ => push(text, s),
    }
}

/// Every node of `input`, packed.
pub(crate) fn encode(input: &ClusterInput) -> NodeTable {
    let nodes = input.nodes();
    let mut text = String::with_capacity(nodes.len() * 112);
    let mut rows = Vec::with_capacity(nodes.len());
    let mut labels: Vec<LabelRow> = Vec::with_capacity(nodes.len() * 2);
    let mut resources: Vec<ResourceRow> = Vec::with_capacity(nodes.len());
    // Where the previous node's labels and resources start.
    let (mut prev_labels, mut prev_resources) = (0..0, 0..0);
    for node in nodes {
        let id = push(&mut text, &node.id);
        let address = push(&mut text, &node.address);
        let hostname = push(&mut text, &node.hostname);

        let first_label = labels.len();
        for (i, kv) in node.labels.iter().enumerate() {
            let previous = prev_labels
                .clone()
                .nth(i)
                .and_then(|at| labels.get(at).map(|r: &LabelRow| (r.key, r.value)));
            let key = reuse_or_push(&mut text, previous.map(|p| p.0), &kv.key);
            let value = reuse_or_push(&mut text, previous.map(|p| p.1), &kv.value);
            labels.push(LabelRow { key, value });
        }
        prev_labels = first_label..labels.len();

        let first_resource = resources.len();
        for (i, r) in node.resources.custom.iter().enumerate() {
            let previous = prev_resources
                .clone()
                .nth(i)
                .and_then(|at| resources.get(at).map(|r: &ResourceRow| r.name));
            let name = reuse_or_push(&mut text, previous, &r.name);
            resources.push(ResourceRow {
                name,
                amount: r.amount,
            });
        }
        prev_resources = first_resource..resources.len();

        rows.push(NodeRow {
            id,
            address,
            hostname,
            is_head: node.is_head,
            alive: node.alive,
            serving: input.is_serving(node),
            cpu: node.resources.cpu,
            gpu: node.resources.gpu,
            memory_bytes: node.resources.memory_bytes,
            object_store_memory_bytes: node.resources.object_store_memory_bytes,
            start_time_ms: node.start_time_ms,
            labels: span(first_label, node.labels.len()),
            resources: span(first_resource, node.resources.custom.len()),
        });
    }
    NodeTable {
        nodes: rows,
        labels,
        resources,
        text,
    }
}
