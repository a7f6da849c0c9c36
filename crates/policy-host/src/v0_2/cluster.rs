//! The `cluster` resource: one snapshot lent to the plugin for one call,
//! and the host side of its queries. Aggregates are computed here, in
//! native code, so a policy that only counts never copies a node.
//!
//! Entry point: [`ClusterInput`], pushed into the store's resource table
//! by [`super::with_cluster`].

use super::bindings::types::{
    self as wire, HostCluster, LabelTotals, NodeFilter, NodeTable, NodeTotals, Timing, Topology,
};
use super::{convert, table};
use crate::sandbox::State;
use orchestrator_domain::{ClusterSnapshot, HealthSnapshot, Node};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::Resource;

/// Most node names one `totals` query returns.
const NAME_LIMIT_MAX: u32 = 1024;

/// What a `cluster` handle refers to: the snapshot, and for health the ids
/// of the nodes the server was launched with.
#[allow(unreachable_pub)] // bindgen's `with` re-exports it from the generated module
pub struct ClusterInput {
    snapshot: Arc<ClusterSnapshot>,
    /// Sorted node ids (health only).
    serving: Vec<String>,
}

impl ClusterInput {
    /// A readiness or launch snapshot, shared with the caller (no copy).
    pub(crate) fn new(snapshot: Arc<ClusterSnapshot>) -> Self {
        Self {
            snapshot,
            serving: Vec::new(),
        }
    }

    /// A health snapshot's nodes; the phase's time is the serve phase's.
    pub(crate) fn for_health(health: &HealthSnapshot) -> Self {
        let mut serving = health.server_nodes.clone();
        serving.sort_unstable();
        Self {
            snapshot: Arc::new(ClusterSnapshot {
                nodes: health.nodes.clone(),
                elapsed_ms: health.uptime_ms,
                ..ClusterSnapshot::default()
            }),
            serving,
        }
    }

    pub(crate) fn nodes(&self) -> &[Node] {
        &self.snapshot.nodes
    }

    pub(crate) fn is_serving(&self, node: &Node) -> bool {
        self.serving
            .binary_search_by(|id| id.as_str().cmp(&node.id))
            .is_ok()
    }
}

/// Whether `node` matches every field of `filter` that is set.
fn matches(node: &Node, filter: &NodeFilter) -> bool {
    filter.alive.is_none_or(|a| node.alive == a)
        && filter.is_head.is_none_or(|h| node.is_head == h)
        && filter.gpus_below.is_none_or(|g| node.resources.gpu < g)
        && filter.gpus_at_least.is_none_or(|g| node.resources.gpu >= g)
        && filter.usable.is_none_or(|u| node.health.usable() == u)
        && filter.label.as_ref().is_none_or(|want| {
            node.labels
                .iter()
                .any(|kv| kv.key == want.key && kv.value == want.value)
        })
}

/// A node's name in messages: its hostname, or its address without one.
fn name_of(node: &Node) -> &str {
    if node.hostname.is_empty() {
        &node.address
    } else {
        &node.hostname
    }
}

fn add(totals: &mut NodeTotals, node: &Node) {
    totals.count += 1;
    totals.cpus += node.resources.cpu;
    totals.gpus += node.resources.gpu;
    totals.memory_bytes = totals
        .memory_bytes
        .saturating_add(node.resources.memory_bytes);
}

fn empty_totals() -> NodeTotals {
    NodeTotals {
        count: 0,
        cpus: 0.0,
        gpus: 0.0,
        memory_bytes: 0,
        names: Vec::new(),
    }
}

/// The `totals` query.
pub(crate) fn totals(nodes: &[Node], filter: &NodeFilter, name_limit: u32) -> NodeTotals {
    let limit = name_limit.min(NAME_LIMIT_MAX) as usize;
    let mut totals = empty_totals();
    for node in nodes.iter().filter(|n| matches(n, filter)) {
        add(&mut totals, node);
        if totals.names.len() < limit {
            totals.names.push(name_of(node).to_string());
        }
    }
    totals
}

/// The `totals-by-label` query.
pub(crate) fn totals_by_label(nodes: &[Node], key: &str, filter: &NodeFilter) -> Vec<LabelTotals> {
    let mut groups: BTreeMap<&str, NodeTotals> = BTreeMap::new();
    for node in nodes.iter().filter(|n| matches(n, filter)) {
        if let Some(kv) = node.labels.iter().find(|kv| kv.key == key) {
            add(groups.entry(&kv.value).or_insert_with(empty_totals), node);
        }
    }
    groups
        .into_iter()
        .map(|(value, totals)| LabelTotals {
            value: value.to_string(),
            totals,
        })
        .collect()
}

impl State {
    fn cluster(&self, handle: &Resource<ClusterInput>) -> wasmtime::Result<&ClusterInput> {
        Ok(self.table.get(handle)?)
    }
}

impl HostCluster for State {
    fn expected(&mut self, handle: Resource<ClusterInput>) -> wasmtime::Result<Topology> {
        Ok(convert::topology(&self.cluster(&handle)?.snapshot.expected))
    }

    fn timing(&mut self, handle: Resource<ClusterInput>) -> wasmtime::Result<Timing> {
        let s = &self.cluster(&handle)?.snapshot;
        Ok(Timing {
            elapsed_ms: s.elapsed_ms,
            deadline_ms: s.deadline_ms,
            left_ms: (s.deadline_ms > 0).then(|| s.deadline_ms.saturating_sub(s.elapsed_ms)),
        })
    }

    fn diagnostics(&mut self, handle: Resource<ClusterInput>) -> wasmtime::Result<Vec<String>> {
        Ok(self.cluster(&handle)?.snapshot.diagnostics.clone())
    }

    fn totals(
        &mut self,
        handle: Resource<ClusterInput>,
        filter: NodeFilter,
        name_limit: u32,
    ) -> wasmtime::Result<NodeTotals> {
        Ok(totals(self.cluster(&handle)?.nodes(), &filter, name_limit))
    }

    fn totals_by_label(
        &mut self,
        handle: Resource<ClusterInput>,
        key: String,
        filter: NodeFilter,
    ) -> wasmtime::Result<Vec<LabelTotals>> {
        Ok(totals_by_label(
            self.cluster(&handle)?.nodes(),
            &key,
            &filter,
        ))
    }

    fn nodes(&mut self, handle: Resource<ClusterInput>) -> wasmtime::Result<NodeTable> {
        Ok(table::encode(self.cluster(&handle)?))
    }

    fn drop(&mut self, handle: Resource<ClusterInput>) -> wasmtime::Result<()> {
        // The host lends clusters as borrows, so a plugin never owns one;
        // a handle dropped here is one the host already took back.
        let _ = self.table.delete(handle);
        Ok(())
    }
}

impl wire::Host for State {}
