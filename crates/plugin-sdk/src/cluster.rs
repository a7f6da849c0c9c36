//! The cluster a policy judges, as plain Rust: counts and totals answered
//! by the host ([`Cluster::totals`], [`Cluster::count`]), and every node
//! with its labels ([`Cluster::nodes`]) when a policy needs to look at each
//! one.
//!
//! Under contract 0.2.0 the cluster stays in the orchestrator: aggregate
//! queries cost the same at any cluster size, and the node table is
//! fetched once, packed, the first time [`Cluster::nodes`] is called.

use crate::types as wit;
use core::cell::OnceCell;

pub use wit::{NodeGroup, Topology};

/// Which nodes a query counts. Every condition set must hold; the default
/// matches every node.
///
/// ```
/// use orchestrator_plugin_sdk::Filter;
/// let gpu_workers = Filter::alive().workers().gpus_at_least(1.0);
/// let a100 = Filter::alive().label("accelerator", "a100");
/// # let _ = (gpu_workers, a100);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    alive: Option<bool>,
    is_head: Option<bool>,
    label: Option<(String, String)>,
    gpus_below: Option<f64>,
    gpus_at_least: Option<f64>,
    usable: Option<bool>,
}

impl Filter {
    /// Every node, alive or dead.
    pub fn all() -> Self {
        Self::default()
    }

    /// Alive nodes.
    pub fn alive() -> Self {
        Self {
            alive: Some(true),
            ..Self::default()
        }
    }

    /// Dead nodes.
    pub fn dead() -> Self {
        Self {
            alive: Some(false),
            ..Self::default()
        }
    }

    /// Only the head.
    pub fn head(mut self) -> Self {
        self.is_head = Some(true);
        self
    }

    /// Only workers.
    pub fn workers(mut self) -> Self {
        self.is_head = Some(false);
        self
    }

    /// Only nodes labelled `key=value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.label = Some((key.to_string(), value.to_string()));
        self
    }

    /// Only nodes offering fewer than `gpus` GPUs.
    pub fn gpus_below(mut self, gpus: f64) -> Self {
        self.gpus_below = Some(gpus);
        self
    }

    /// Only nodes offering at least `gpus` GPUs.
    pub fn gpus_at_least(mut self, gpus: f64) -> Self {
        self.gpus_at_least = Some(gpus);
        self
    }

    /// Only nodes that may count: not judged unhealthy by their own
    /// node-health check, nor pending their first report (unknown,
    /// healthy, degraded and stale count).
    pub fn usable(mut self) -> Self {
        self.usable = Some(true);
        self
    }

    /// Only nodes that may not count: judged unhealthy by their own check,
    /// or pending their first report.
    pub fn unhealthy(mut self) -> Self {
        self.usable = Some(false);
        self
    }

    fn to_wit(&self) -> wit::NodeFilter {
        wit::NodeFilter {
            alive: self.alive,
            is_head: self.is_head,
            label: self.label.as_ref().map(|(k, v)| wit::KeyValue {
                key: k.clone(),
                value: v.clone(),
            }),
            gpus_below: self.gpus_below,
            gpus_at_least: self.gpus_at_least,
            usable: self.usable,
        }
    }
}

/// What a query found: the matching nodes' count and totals, and the names
/// of the first of them when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// Matching nodes.
    pub count: u32,
    /// Their CPUs in total.
    pub cpus: f64,
    /// Their GPUs in total.
    pub gpus: f64,
    /// Their memory in total, in bytes.
    pub memory_bytes: u64,
    /// The names (hostname, else address) of the first matching nodes.
    pub names: Vec<String>,
}

impl From<wit::NodeTotals> for Totals {
    fn from(t: wit::NodeTotals) -> Self {
        Self {
            count: t.count,
            cpus: t.cpus,
            gpus: t.gpus,
            memory_bytes: t.memory_bytes,
            names: t.names,
        }
    }
}

/// The cluster as the orchestrator saw it when it called the policy.
pub struct Cluster<'a> {
    handle: &'a wit::Cluster,
    expected: OnceCell<Topology>,
    timing: OnceCell<wit::Timing>,
    table: OnceCell<wit::NodeTable>,
}

impl<'a> Cluster<'a> {
    #[doc(hidden)]
    pub fn new(handle: &'a wit::Cluster) -> Self {
        Self {
            handle,
            expected: OnceCell::new(),
            timing: OnceCell::new(),
            table: OnceCell::new(),
        }
    }

    /// The cluster the user asked for.
    pub fn expected(&self) -> &Topology {
        self.expected.get_or_init(|| self.handle.expected())
    }

    fn timing(&self) -> &wit::Timing {
        self.timing.get_or_init(|| self.handle.timing())
    }

    /// Time spent so far in the current phase.
    pub fn elapsed_ms(&self) -> u64 {
        self.timing().elapsed_ms
    }

    /// The phase's deadline, counted from its start; 0 means none.
    pub fn deadline_ms(&self) -> u64 {
        self.timing().deadline_ms
    }

    /// Time left before the deadline (0 once passed); `None` without one.
    pub fn time_left_ms(&self) -> Option<u64> {
        self.timing().left_ms
    }

    /// Whether the phase has a deadline and it has passed.
    pub fn deadline_passed(&self) -> bool {
        self.time_left_ms() == Some(0)
    }

    /// Facts the host gathered (for example Pending pods and why).
    pub fn diagnostics(&self) -> Vec<String> {
        self.handle.diagnostics()
    }

    /// How many nodes match `filter`.
    pub fn count(&self, filter: &Filter) -> u32 {
        self.totals(filter).count
    }

    /// Count and totals of the nodes matching `filter` (no names).
    pub fn totals(&self, filter: &Filter) -> Totals {
        self.handle.totals(&filter.to_wit(), 0).into()
    }

    /// As [`totals`](Self::totals), with the names of at most `names`
    /// matching nodes (in snapshot order), for messages.
    pub fn totals_named(&self, filter: &Filter, names: u32) -> Totals {
        self.handle.totals(&filter.to_wit(), names).into()
    }

    /// The totals of the nodes matching `filter`, grouped by the value of
    /// label `key` (nodes without it left out), sorted by value.
    pub fn totals_by_label(&self, key: &str, filter: &Filter) -> Vec<(String, Totals)> {
        self.handle
            .totals_by_label(key, &filter.to_wit())
            .into_iter()
            .map(|g| (g.value, g.totals.into()))
            .collect()
    }

    /// Every node the GCS knows, dead ones included, head first. The
    /// first call fetches the whole table; prefer [`totals`](Self::totals)
    /// when counts are enough.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = Node<'_>> + Clone + '_ {
        let table = self.table.get_or_init(|| self.handle.nodes());
        let stride = (table.words_per_node as usize).max(WORDS_PER_NODE);
        table
            .nodes
            .chunks_exact(stride)
            .map(move |row| Node { table, row })
    }
}

/// Words per node this SDK reads (the table may have more).
const WORDS_PER_NODE: usize = 11;
const HEAD: u64 = 1;
const ALIVE: u64 = 2;
const SERVING: u64 = 4;

/// One node: a view into the table the host sent.
#[derive(Clone, Copy)]
pub struct Node<'t> {
    table: &'t wit::NodeTable,
    /// At least [`WORDS_PER_NODE`] words.
    row: &'t [u64],
}

/// `(start, len)` of a span word.
fn span(word: u64) -> (usize, usize) {
    ((word >> 32) as usize, (word & 0xffff_ffff) as usize)
}

impl<'t> Node<'t> {
    fn word(&self, i: usize) -> u64 {
        self.row.get(i).copied().unwrap_or(0)
    }

    fn text_at(table: &'t wit::NodeTable, word: u64) -> &'t str {
        let (start, len) = span(word);
        start
            .checked_add(len)
            .and_then(|end| table.text.get(start..end))
            .unwrap_or("")
    }

    fn text(&self, i: usize) -> &'t str {
        Self::text_at(self.table, self.word(i))
    }

    /// Two-word rows `span` of `list`.
    fn rows(list: &'t [u64], word: u64) -> core::slice::ChunksExact<'t, u64> {
        let (start, len) = span(word);
        let rows = start
            .checked_mul(2)
            .zip(len.checked_mul(2))
            .and_then(|(s, l)| list.get(s..s.checked_add(l)?))
            .unwrap_or(&[]);
        rows.chunks_exact(2)
    }

    /// The node id in hex.
    pub fn id(&self) -> &'t str {
        self.text(0)
    }

    /// The first 8 characters of the id, for messages.
    pub fn short_id(&self) -> &'t str {
        let id = self.id();
        id.get(..8).unwrap_or(id)
    }

    /// The address the node's raylet listens on.
    pub fn address(&self) -> &'t str {
        self.text(1)
    }

    /// The node's hostname (in Kubernetes, the pod name).
    pub fn hostname(&self) -> &'t str {
        self.text(2)
    }

    /// The hostname, or the address when there is none: for messages.
    pub fn name(&self) -> &'t str {
        match self.hostname() {
            "" => self.address(),
            h => h,
        }
    }

    /// What the node's own health check last said (`Unknown` until it
    /// reported, or when its checks are off).
    pub fn health(&self) -> wit::NodeHealthState {
        match self.word(11) {
            1 => wit::NodeHealthState::Healthy,
            2 => wit::NodeHealthState::Degraded,
            3 => wit::NodeHealthState::Unhealthy,
            4 => wit::NodeHealthState::Stale,
            5 => wit::NodeHealthState::Pending,
            _ => wit::NodeHealthState::Unknown,
        }
    }

    /// Why the node is degraded or unhealthy (empty otherwise), e.g.
    /// `GPU 3 XID 79 (fallen off the bus)`.
    pub fn health_reason(&self) -> &'t str {
        self.text(12)
    }

    /// Whether the node may count toward readiness: not judged unhealthy,
    /// nor pending its first health report.
    pub fn usable(&self) -> bool {
        !matches!(
            self.health(),
            wit::NodeHealthState::Unhealthy | wit::NodeHealthState::Pending
        )
    }

    /// Whether this is the head node.
    pub fn is_head(&self) -> bool {
        self.word(3) & HEAD != 0
    }

    /// Whether the GCS considers the node alive.
    pub fn alive(&self) -> bool {
        self.word(3) & ALIVE != 0
    }

    /// Whether the serving process was launched with this node alive
    /// (health policies; false elsewhere).
    pub fn serving(&self) -> bool {
        self.word(3) & SERVING != 0
    }

    /// Logical CPUs.
    pub fn cpu(&self) -> f64 {
        f64::from_bits(self.word(4))
    }

    /// GPUs.
    pub fn gpu(&self) -> f64 {
        f64::from_bits(self.word(5))
    }

    /// Memory available to tasks and actors, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.word(6)
    }

    /// Object-store memory, in bytes.
    pub fn object_store_memory_bytes(&self) -> u64 {
        self.word(7)
    }

    /// When the node registered, in milliseconds since the Unix epoch.
    pub fn start_time_ms(&self) -> u64 {
        self.word(8)
    }

    /// The node's labels as `(key, value)`, sorted by key.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&'t str, &'t str)> + 't {
        let table = self.table;
        Self::rows(&table.labels, self.word(9)).map(move |l| {
            (
                Self::text_at(table, l.first().copied().unwrap_or(0)),
                Self::text_at(table, l.get(1).copied().unwrap_or(0)),
            )
        })
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&'t str> {
        self.labels().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Custom resources (anything but CPU, GPU, memory and object-store
    /// memory) as `(name, amount)`, sorted by name.
    pub fn resources(&self) -> impl ExactSizeIterator<Item = (&'t str, f64)> + 't {
        let table = self.table;
        Self::rows(&table.resources, self.word(10)).map(move |r| {
            (
                Self::text_at(table, r.first().copied().unwrap_or(0)),
                f64::from_bits(r.get(1).copied().unwrap_or(0)),
            )
        })
    }

    /// The amount of custom resource `name`.
    pub fn resource(&self, name: &str) -> Option<f64> {
        self.resources().find(|(n, _)| *n == name).map(|(_, a)| a)
    }
}

impl core::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id())
            .field("address", &self.address())
            .field("hostname", &self.hostname())
            .field("is_head", &self.is_head())
            .field("alive", &self.alive())
            .field("gpu", &self.gpu())
            .finish_non_exhaustive()
    }
}
