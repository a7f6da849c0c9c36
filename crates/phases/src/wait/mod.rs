//! The wait phase: follow the cluster's membership (through a
//! [`MembershipSource`], Ray's GCS today) and let the readiness policy
//! decide. Entry point: [`wait_for_cluster`].
//!
//! Every membership update (pushed by the GCS within milliseconds) builds a
//! readiness snapshot and calls the policy; updates that arrive together
//! are coalesced into one call. `wait(reason)` is logged when the reason
//! changes; `ready` ends the phase; `fail(reason)`, a failing policy or the
//! deadline end it with a diagnosis.

mod asking;
pub mod capacity;

use crate::endpoints::Status;
use crate::membership::MembershipSource;
use crate::node_health::Board;
use asking::{Asked, Asking};
use orchestrator_domain::{
    ClusterSnapshot, ClusterView, ExternalFacts, KeyValue, MembershipChange, MembershipUpdate,
    Node, Readiness, StartupStep, Topology, UpdateSource,
};
use orchestrator_policy_host::{PluginError, ReadinessPolicy, World};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to wait for.
#[derive(Debug, Clone)]
pub struct WaitSpec {
    /// Where membership comes from.
    pub source: Arc<dyn MembershipSource>,
    /// The expected topology.
    pub expected: Topology,
    /// How long the phase may take.
    pub timeout: Duration,
    /// The readiness policy's parameters.
    pub params: Vec<KeyValue>,
    /// Fixed facts gathered elsewhere, passed to the policy.
    pub diagnostics: Vec<String>,
    /// Live facts from a platform watcher (Kubernetes): an expected
    /// topology that replaces `expected` while the platform knows one, and
    /// why expected nodes have not joined. Each change is a new snapshot.
    pub facts: Option<tokio::sync::watch::Receiver<ExternalFacts>>,
    /// Where progress is reported (`/status`, `/metrics`, Events).
    pub status: Option<Arc<Status>>,
    /// Every node's own health check, as the head follows it: a node
    /// judged unhealthy does not count toward readiness (the snapshot's
    /// nodes carry their health). Each change is a new snapshot.
    pub health: Option<tokio::sync::watch::Receiver<Arc<Board>>>,
    /// Ask the source's autoscaler for the expected workers' capacity
    /// ([`capacity::bundles_for`]), again whenever the expected topology
    /// changes; the request outlives the wait (withdrawn at stop).
    pub request_resources: bool,
    /// Before the phase ends ready, ask every alive node itself (the
    /// source's [`MembershipSource::silent_nodes`]: Ray's raylets) to
    /// answer within this limit. One that does not (frozen, cut off) is
    /// not counted, and is asked again every second, until it answers;
    /// the GCS would list it as alive until its health checks give up
    /// (about 30 s under Ray's defaults). None: the source's word alone.
    pub ask_nodes: Option<Duration>,
}

/// The cluster is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The snapshot the policy said `ready` to.
    pub snapshot: ClusterSnapshot,
    /// When the policy said ready.
    pub(crate) decided_at: Instant,
    /// Policy calls made.
    pub policy_calls: u32,
}

impl Ready {
    /// One line: the alive nodes (the first 16 named) and the policy
    /// calls, for `orchestrator wait`.
    pub fn summary(&self) -> String {
        let alive: Vec<String> = self
            .alive()
            .map(|n| format!("{}{}", if n.is_head { "head " } else { "" }, n.address))
            .collect();
        // Thousands of nodes: name the first few.
        let shown = alive.len().min(16);
        let more = if alive.len() > shown {
            format!(", ... and {} more", alive.len() - shown)
        } else {
            String::new()
        };
        format!(
            "{} nodes alive ({}{more}); {} policy calls",
            alive.len(),
            alive[..shown].join(", "),
            self.policy_calls
        )
    }

    /// One line a node: role, address, id, resources (for `local`).
    pub fn node_lines(&self) -> String {
        self.alive()
            .map(|n| {
                format!(
                    "  {:<6} {:<12} node {}  cpu={} gpu={}\n",
                    if n.is_head { "head" } else { "worker" },
                    n.address,
                    n.id.get(..12).unwrap_or(&n.id),
                    n.resources.cpu,
                    n.resources.gpu
                )
            })
            .collect()
    }

    /// The nodes alive at the decision.
    pub fn alive(&self) -> impl Iterator<Item = &Node> {
        self.snapshot.nodes.iter().filter(|n| n.alive)
    }
}

/// What the wait saw, for a failure message.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Where membership came from (`the Ray GCS at HOST:PORT`).
    pub source: String,
    /// Expected node count.
    pub expected: Topology,
    /// The last membership seen.
    pub nodes: Vec<Node>,
    /// Whether a snapshot was ever taken.
    pub connected: bool,
    /// The last GCS error, if any.
    pub(crate) gcs_error: Option<String>,
    /// The policy's last `wait` reason.
    pub last_reason: Option<String>,
    /// How long the phase ran.
    pub elapsed: Duration,
    /// The policy's name.
    pub policy: String,
    /// What the platform (Kubernetes) said about missing nodes.
    pub diagnostics: Vec<String>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.connected
            && let Some(e) = &self.gcs_error
            && orchestrator_ray_gcs::is_credentials_error(e)
        {
            return write!(
                f,
                "{} never let this orchestrator in ({:.0} s): {e}",
                self.source,
                self.elapsed.as_secs_f64(),
            );
        }
        if !self.connected {
            return write!(
                f,
                "{} never answered in {:.0} s (last error: {}); check that the head is running and its GCS port is reachable",
                self.source,
                self.elapsed.as_secs_f64(),
                self.gcs_error.as_deref().unwrap_or("none")
            );
        }
        let alive: Vec<&Node> = self.nodes.iter().filter(|n| n.alive).collect();
        let dead: Vec<&Node> = self.nodes.iter().filter(|n| !n.alive).collect();
        let missing = self.expected.nodes.saturating_sub(alive.len() as u32);
        writeln!(
            f,
            "nodes: {} of {} expected alive{}",
            alive.len(),
            self.expected.nodes,
            if missing > 0 {
                format!(
                    "; missing {missing} node{} that never joined or died",
                    if missing == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            }
        )?;
        for n in &alive {
            writeln!(f, "  alive: {}", describe(n))?;
        }
        for n in &dead {
            writeln!(f, "  dead:  {}", describe(n))?;
        }
        let gpus: f64 = alive.iter().map(|n| n.resources.gpu).sum();
        if self.expected.gpus > 0.0 {
            writeln!(f, "GPUs: {gpus} of {} expected", self.expected.gpus)?;
        }
        if let Some(e) = &self.gcs_error {
            writeln!(f, "GCS: last error {e}")?;
        }
        for line in &self.diagnostics {
            writeln!(f, "  why: {line}")?;
        }
        write!(
            f,
            "readiness policy {} last said: {}",
            self.policy,
            self.last_reason.as_deref().unwrap_or("(never called)")
        )
    }
}

fn describe(n: &Node) -> String {
    let health = if n.health.is_unknown() {
        String::new()
    } else if n.health.reason.is_empty() {
        format!(" {}", n.health.state)
    } else {
        format!(" {}: {}", n.health.state, n.health.reason)
    };
    format!(
        "{}{} {} (node {}) cpu={} gpu={}{health}",
        if n.is_head { "head " } else { "" },
        n.address,
        n.hostname,
        n.short_id(),
        n.resources.cpu,
        n.resources.gpu
    )
}

/// Why the wait phase ended without a ready cluster.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The policy said `fail`.
    #[error("the readiness policy gave up: {reason}\n{diagnosis}")]
    Failed {
        /// The policy's reason.
        reason: String,
        /// What was seen.
        diagnosis: Box<Diagnosis>,
    },
    /// The deadline passed.
    #[error("the cluster was not ready after {:.0} s\n{diagnosis}", .diagnosis.elapsed.as_secs_f64())]
    Timeout {
        /// What was seen.
        diagnosis: Box<Diagnosis>,
    },
    /// The policy itself failed (trap, timeout, memory).
    #[error("the readiness policy failed: {0}")]
    Policy(#[from] PluginError),
}

/// How often the policy is asked again when nothing changes (so elapsed
/// time and the deadline reach it).
const REEVALUATE: Duration = Duration::from_secs(5);

/// What the wait has seen so far.
struct Seen {
    view: ClusterView,
    connected: bool,
    gcs_error: Option<String>,
    last_reason: Option<String>,
    last_update_at: Instant,
    facts: ExternalFacts,
    expected: Topology,
    health: Arc<Board>,
    /// When each node was first seen alive (for the first-report grace).
    first_seen: std::collections::HashMap<String, Instant>,
    /// When a node pending its first health report stops being pending.
    pending_until: Option<Instant>,
    /// Nodes alive in the source that did not answer when asked
    /// themselves ([`WaitSpec::ask_nodes`]): what happened, and since when.
    silent: std::collections::BTreeMap<String, (String, Instant)>,
    /// When the silent nodes were last asked.
    silent_asked_at: Instant,
    /// The view's nodes the last judgement counted as dead for being
    /// silent (alive again in the view when it takes its nodes back).
    muted: Vec<usize>,
    /// When each node last answered when asked itself.
    answered: std::collections::HashMap<String, Instant>,
    /// Nodes seen joining and not asked yet: asked in the background as
    /// they join, so the confirmation before ready has little left to ask.
    unasked: Vec<String>,
    /// Whether nodes are asked at all ([`WaitSpec::ask_nodes`]); without
    /// it, no answer is kept.
    asking: bool,
    /// No answer is renewed before then (a renewal that could not ask
    /// waits a second).
    refresh_paused_until: Instant,
}

/// An answer this recent stands for the node at the confirmation before
/// ready: one period of Ray's own GCS health checks
/// (`health_check_period_ms`, 3 s by default), so a node counted has
/// answered at least as recently as the GCS itself last heard from it. A
/// registration the GCS pushed counts as an answer at the time it arrived
/// (the raylet itself made that call); a node an ask in flight finds
/// silent later is not counted from then on.
const ANSWER_STANDS_FOR: Duration = Duration::from_secs(3);

/// How often nodes that did not answer are asked again.
const ASK_SILENT_EVERY: Duration = Duration::from_secs(1);

/// In a cluster of up to this many alive nodes, every answer is renewed in
/// the background before it stops standing ([`REFRESH_AFTER`]): the
/// confirmation before ready then has nothing left to ask, and the wait
/// ends as the last node registers (one small call a node every 2 s).
/// Larger clusters are asked at the confirmation, all at once.
const KEEP_FRESH_UP_TO: usize = 64;

/// An answer this old is renewed (a second before it stops standing).
const REFRESH_AFTER: Duration = Duration::from_secs(2);

impl Seen {
    /// Hands the nodes that joined, and the silent ones when they are due
    /// again, to be asked in the background.
    fn hand_to(&mut self, asking: Option<&mut Asking>) {
        let joined = std::mem::take(&mut self.unasked);
        if let Some(asking) = asking {
            asking.joined(joined);
            if !self.silent.is_empty() && self.silent_asked_at.elapsed() >= ASK_SILENT_EVERY {
                asking.silent(self.silent.keys().cloned().collect());
            }
            let now = Instant::now();
            if !asking.refreshing() && now >= self.refresh_paused_until {
                asking.refresh(
                    self.kept_fresh()
                        .filter(|(_, at)| now.duration_since(*at) >= REFRESH_AFTER)
                        .map(|(id, _)| id.clone())
                        .collect(),
                );
            }
        }
    }

    /// The nodes whose answers are kept fresh, with when each last
    /// answered: every alive node that answered, in a cluster small
    /// enough ([`KEEP_FRESH_UP_TO`]).
    fn kept_fresh(&self) -> impl Iterator<Item = (&String, Instant)> {
        // Counted up to one past the bound: a large cluster costs no walk
        // over its nodes on every turn of the wait.
        let small = self.view.alive().take(KEEP_FRESH_UP_TO + 1).count() <= KEEP_FRESH_UP_TO;
        self.view
            .alive()
            .take(if small { KEEP_FRESH_UP_TO } else { 0 })
            .filter_map(|n| self.answered.get_key_value(&n.id))
            .map(|(id, at)| (id, *at))
    }

    /// When the next answer kept fresh is due to be renewed.
    fn refresh_due(&self) -> Option<Instant> {
        let due = self.kept_fresh().map(|(_, at)| at + REFRESH_AFTER).min()?;
        Some(due.max(self.refresh_paused_until))
    }

    /// Nothing seen yet at `start`, with the platform's `facts`.
    fn new(spec: &WaitSpec, start: Instant, facts: ExternalFacts) -> Self {
        Self {
            view: ClusterView::default(),
            connected: false,
            gcs_error: None,
            last_reason: None,
            last_update_at: start,
            expected: facts.expected.clone().unwrap_or(spec.expected.clone()),
            facts,
            // The board as it is now: a node in the first snapshot is
            // pending its first report like one that joins later.
            health: spec
                .health
                .as_ref()
                .map(|rx| Arc::clone(&rx.borrow()))
                .unwrap_or_default(),
            first_seen: std::collections::HashMap::new(),
            pending_until: None,
            silent: Default::default(),
            silent_asked_at: start,
            muted: vec![],
            answered: Default::default(),
            unasked: vec![],
            asking: spec.ask_nodes.is_some(),
            refresh_paused_until: start,
        }
    }

    /// A node's address for messages, or its id when it is not in view.
    fn address_of(&self, id: &str) -> String {
        self.view
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.to_string(), |n| n.address.clone())
    }

    /// Records what the latest asking found about `asked`: `silent` are
    /// those that did not answer; the rest of `asked` answered. Whether a
    /// node stopped or started being silent.
    fn record_answers(&mut self, asked: &[String], silent: Vec<(String, String)>) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for id in asked {
            if silent.iter().any(|(s, _)| s == id) {
                self.answered.remove(id);
                continue;
            }
            self.answered.insert(id.clone(), now);
            if self.silent.remove(id).is_some() {
                changed = true;
                tracing::info!(node = %self.address_of(id), "the node answers again; counted");
            }
        }
        for (id, why) in silent {
            let address = self.address_of(&id);
            match self.silent.get_mut(&id) {
                Some(entry) => entry.0 = why,
                None => {
                    changed = true;
                    tracing::warn!(
                        node = %address,
                        "the node is alive in the GCS but {why}: not counted until it answers"
                    );
                    self.silent.insert(id, (why, now));
                }
            }
        }
        changed
    }

    /// Records one background ask's answers; whether a node stopped or
    /// started being silent.
    fn take_answers(&mut self, which: Asked, (asked, answer): asking::Answers) -> bool {
        if which == Asked::Silent {
            self.silent_asked_at = Instant::now();
        }
        match answer {
            Ok(silent) => self.record_answers(&asked, silent),
            Err(e) => {
                match which {
                    Asked::Silent => tracing::warn!("cannot ask the silent nodes again: {e}"),
                    Asked::Joined => tracing::debug!("cannot ask the nodes that joined: {e}"),
                    Asked::Refresh => {
                        tracing::debug!("cannot renew the nodes' answers: {e}");
                        self.refresh_paused_until = Instant::now() + ASK_SILENT_EVERY;
                    }
                }
                false
            }
        }
    }

    /// Nodes a judgement muted are alive again in the view.
    fn unmute(&mut self, muted: &[usize]) {
        for i in muted {
            if let Some(node) = self.view.nodes.get_mut(*i) {
                node.alive = true;
            }
        }
    }

    /// The head's resources, once its node is seen alive.
    fn head_resources(&self) -> Option<&orchestrator_domain::Resources> {
        self.view
            .nodes
            .iter()
            .find(|n| n.is_head && n.alive)
            .map(|n| &n.resources)
    }
}

/// Most joins or deaths of one update logged one line each; past it, one
/// line says how many and names the first and the last.
const LOGGED_ONE_BY_ONE: usize = 16;

/// Logs an update's joins (info) and deaths (warn): one line a node for a
/// few, a summary line for a burst (thousands of nodes join at once in
/// the largest clusters).
fn log_changes(changes: &[MembershipChange]) {
    let joined: Vec<&Node> = changes
        .iter()
        .filter_map(|c| match c {
            MembershipChange::Joined(n) => Some(n),
            MembershipChange::Died { .. } => None,
        })
        .collect();
    let died: Vec<(&Node, Option<&str>)> = changes
        .iter()
        .filter_map(|c| match c {
            MembershipChange::Died { node, reason } => Some((node, reason.as_deref())),
            MembershipChange::Joined(_) => None,
        })
        .collect();
    if joined.len() <= LOGGED_ONE_BY_ONE {
        for n in &joined {
            tracing::info!(node = %n.short_id(), address = %n.address, head = n.is_head, gpus = n.resources.gpu, "node joined");
        }
    } else if let (Some(first), Some(last)) = (joined.first(), joined.last()) {
        let gpus: f64 = joined.iter().map(|n| n.resources.gpu).sum();
        tracing::info!(count = joined.len(), gpus, first = %first.address, last = %last.address, "nodes joined");
    }
    if died.len() <= LOGGED_ONE_BY_ONE {
        for (node, reason) in &died {
            tracing::warn!(node = %node.short_id(), address = %node.address, reason = reason.unwrap_or(""), "node died");
        }
    } else if let (Some((first, reason)), Some((last, _))) = (died.first(), died.last()) {
        tracing::warn!(count = died.len(), first = %first.address, last = %last.address, reason = reason.unwrap_or(""), "nodes died");
    }
}

impl Seen {
    /// Applies one membership update, logging joins, deaths and GCS errors.
    fn apply(&mut self, u: MembershipUpdate, source: &str, status: Option<&Status>) {
        match &u.source {
            UpdateSource::Disconnected { error } => {
                if self.gcs_error.as_deref() != Some(error) {
                    tracing::warn!("{source}: {error}");
                }
                self.gcs_error = Some(error.clone());
            }
            UpdateSource::Snapshot => {
                self.connected = true;
                self.gcs_error = None;
            }
            UpdateSource::Push => {}
        }
        log_changes(&u.changes);
        for change in &u.changes {
            if let MembershipChange::Joined(n) = change {
                if self.asking {
                    self.unasked.push(n.id.clone());
                    // A registration pushed by the GCS is the raylet's own
                    // call, made just now: as good as an answer (it is
                    // asked all the same, in the background).
                    if u.source == UpdateSource::Push {
                        self.answered.insert(n.id.clone(), u.received_at);
                    }
                }
                self.first_seen.entry(n.id.clone()).or_insert(u.received_at);
                if let Some(status) = status {
                    status.mark(StartupStep::NodeJoined, n.address.clone());
                }
            }
        }
        if let Some(view) = &u.view {
            for n in view.alive() {
                if self.asking && !self.answered.contains_key(&n.id) {
                    self.unasked.push(n.id.clone());
                }
                if let std::collections::hash_map::Entry::Vacant(seen) =
                    self.first_seen.entry(n.id.clone())
                {
                    seen.insert(u.received_at);
                    // Present when the wait began: joined before it.
                    if let Some(status) = status {
                        status.mark(StartupStep::NodeJoined, n.address.clone());
                    }
                }
            }
        }
        self.last_update_at = u.received_at;
        u.apply_into(&mut self.view);
    }

    /// Takes new platform facts; the expected topology follows them.
    fn set_facts(&mut self, facts: ExternalFacts, configured: &Topology) {
        let expected = facts.expected.clone().unwrap_or(configured.clone());
        if expected != self.expected {
            tracing::info!(
                before = self.expected.nodes,
                now = expected.nodes,
                gpus = expected.gpus,
                "expected topology changed"
            );
            self.expected = expected;
        }
        self.facts = facts;
    }

    /// The fixed diagnostics, then the platform's about missing nodes.
    fn diagnostics(&self, spec: &WaitSpec) -> Vec<String> {
        let mut lines = spec.diagnostics.clone();
        lines.extend(self.facts.diagnose(&self.view.nodes));
        for (id, (why, since)) in &self.silent {
            lines.push(format!(
                "node {} is alive in the GCS but not counted: {why} (for {:.0} s)",
                self.address_of(id),
                since.elapsed().as_secs_f64()
            ));
        }
        lines
    }

    /// Reports progress to `/status` and the metrics.
    fn report(&self, spec: &WaitSpec, diagnostics: &[String]) {
        if let Some(status) = &spec.status {
            status.nodes(self.view.alive().count() as u32, self.expected.nodes);
            status.diagnostics(diagnostics.to_vec());
        }
    }

    fn diagnosis(&self, spec: &WaitSpec, start: Instant, policy: &str) -> Box<Diagnosis> {
        Box::new(Diagnosis {
            source: spec.source.describe(),
            expected: self.expected.clone(),
            // A silent node counts as it did for the policy: not alive.
            nodes: self
                .view
                .nodes
                .iter()
                .cloned()
                .map(|mut n| {
                    n.alive &= !self.silent.contains_key(&n.id);
                    n
                })
                .collect(),
            connected: self.connected,
            gcs_error: self.gcs_error.clone(),
            last_reason: self.last_reason.clone(),
            elapsed: start.elapsed(),
            policy: policy.to_string(),
            diagnostics: self.diagnostics(spec),
        })
    }
}

/// What a judgement of the cluster decided.
enum Judged {
    /// Not yet: keep following.
    Waiting,
    /// The phase is over.
    Done(Result<Ready, WaitError>),
}

/// The wait phase's state between membership updates.
struct Waiter<'a> {
    spec: &'a WaitSpec,
    policy: &'a mut ReadinessPolicy,
    policy_name: String,
    start: Instant,
    deadline: Instant,
    calls: u32,
    seen: Seen,
}

impl<'a> Waiter<'a> {
    /// A wait starting now, with the platform's facts as they are.
    fn new(
        spec: &'a WaitSpec,
        policy: &'a mut ReadinessPolicy,
        facts: Option<&mut tokio::sync::watch::Receiver<ExternalFacts>>,
    ) -> Self {
        let start = Instant::now();
        let facts = facts
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        Self {
            spec,
            policy_name: policy.name().to_string(),
            policy,
            start,
            deadline: start + spec.timeout,
            calls: 0,
            seen: Seen::new(spec, start, facts),
        }
    }

    /// When the policy is asked again with nothing new (at once when a
    /// confirmation found a node silent: `again`), and when to wake (the
    /// silent nodes asked again, unless they are being asked).
    fn next_wake(
        &self,
        judged_at: Instant,
        again: bool,
        asking: Option<&Asking>,
    ) -> (Instant, Instant) {
        let asking_silent = asking.is_some_and(Asking::asking_silent);
        let mut rejudge = self.deadline.min(judged_at + REEVALUATE);
        if let Some(until) = self.seen.pending_until {
            rejudge = rejudge.min(until);
        }
        if again {
            rejudge = Instant::now();
        }
        let mut wake = rejudge;
        if !self.seen.silent.is_empty() && !asking_silent {
            wake = wake.min(self.seen.silent_asked_at + ASK_SILENT_EVERY);
        }
        if asking.is_some_and(|a| !a.refreshing())
            && let Some(due) = self.seen.refresh_due()
        {
            wake = wake.min(due);
        }
        (rejudge, wake)
    }

    fn timed_out(&self) -> Judged {
        Judged::Done(Err(WaitError::Timeout {
            diagnosis: self
                .seen
                .diagnosis(self.spec, self.start, &self.policy_name),
        }))
    }

    /// Asks the readiness policy about the cluster as seen now.
    fn judge(&mut self) -> Judged {
        let (spec, now) = (self.spec, Instant::now());
        let mut diagnostics = self.seen.diagnostics(spec);
        if !self.seen.connected {
            self.seen.report(spec, &diagnostics);
            return if now >= self.deadline {
                self.timed_out()
            } else {
                Judged::Waiting
            };
        }
        if let Some(e) = &self.seen.gcs_error {
            diagnostics.push(format!("GCS connection lost, retrying: {e}"));
        }
        self.seen.report(spec, &diagnostics);
        self.seen.pending_until = self.seen.health.annotate_joining(
            &mut self.seen.view.nodes,
            &self.seen.first_seen,
            now,
        );
        // Nodes that did not answer when asked themselves do not count.
        let mut muted = std::mem::take(&mut self.seen.muted);
        muted.clear();
        for (i, node) in self.seen.view.nodes.iter_mut().enumerate() {
            if node.alive && self.seen.silent.contains_key(&node.id) {
                node.alive = false;
                muted.push(i);
            }
        }
        // The view's nodes are lent to the snapshot and taken back after the
        // call: no copy of thousands of nodes per membership change.
        let snapshot = std::sync::Arc::new(ClusterSnapshot {
            nodes: std::mem::take(&mut self.seen.view.nodes),
            expected: self.seen.expected.clone(),
            elapsed_ms: now.duration_since(self.start).as_millis() as u64,
            deadline_ms: spec.timeout.as_millis() as u64,
            diagnostics,
        });
        self.calls += 1;
        let answer = self.policy.check_shared(&snapshot, &spec.params);
        let mut snapshot =
            std::sync::Arc::try_unwrap(snapshot).unwrap_or_else(|shared| (*shared).clone());
        // Ready hands the snapshot on, nodes and all; otherwise the view
        // takes its nodes back.
        if !matches!(answer, Ok(Readiness::Ready)) {
            self.seen.view.nodes = std::mem::take(&mut snapshot.nodes);
            self.seen.unmute(&muted);
        }
        self.seen.muted = muted;
        if let Some(status) = &spec.status {
            status.policy_call(World::Readiness, now.elapsed().as_secs_f64());
        }
        match answer {
            // Out of time or CPU is no verdict: a loaded machine may be
            // the cause. The next membership change or tick asks again;
            // the deadline still ends the wait.
            Err(e) if e.is_timeout() => {
                tracing::warn!("readiness policy call stopped, asking again: {e}");
                if let Some(status) = &spec.status {
                    status.readiness(format!(
                        "wait: the readiness policy's call was stopped ({e}); asking again"
                    ));
                }
                self.seen.last_reason = None;
                if now >= self.deadline {
                    self.timed_out()
                } else {
                    Judged::Waiting
                }
            }
            Err(e) => Judged::Done(Err(e.into())),
            Ok(Readiness::Ready) => Judged::Done(Ok(self.ready(snapshot))),
            Ok(Readiness::Wait(reason)) => {
                if self.seen.last_reason.as_deref() != Some(reason.as_str()) {
                    tracing::info!("waiting: {reason}");
                    if let Some(status) = &spec.status {
                        status.readiness(format!("wait: {reason}"));
                    }
                    self.seen.last_reason = Some(reason);
                }
                if now >= self.deadline {
                    self.timed_out()
                } else {
                    Judged::Waiting
                }
            }
            Ok(Readiness::Fail(reason)) => Judged::Done(Err(WaitError::Failed {
                reason,
                diagnosis: self.seen.diagnosis(spec, self.start, &self.policy_name),
            })),
        }
    }

    fn ready(&self, snapshot: ClusterSnapshot) -> Ready {
        let decided_at = Instant::now();
        tracing::info!(
            alive = snapshot.nodes.iter().filter(|n| n.alive).count(),
            after_ms = decided_at.duration_since(self.start).as_millis() as u64,
            "cluster ready"
        );
        Ready {
            snapshot,
            decided_at,
            policy_calls: self.calls,
        }
    }
}

/// Runs the wait phase: follows `spec.source` until the readiness policy
/// says ready, says fail, or the deadline passes.
pub async fn wait_for_cluster(
    spec: &WaitSpec,
    policy: &mut ReadinessPolicy,
) -> Result<Ready, WaitError> {
    let mut updates = spec.source.watch();
    let described = spec.source.describe();
    let mut facts_rx = spec.facts.clone();
    let mut waiter = Waiter::new(spec, policy, facts_rx.as_mut());
    // Nodes asked in the background ([`WaitSpec::ask_nodes`]): as they
    // join, and the silent ones again every second.
    let mut asking = spec
        .ask_nodes
        .map(|limit| Asking::new(spec.source.clone(), limit));
    let mut judged_at = waiter.start;
    // A confirmation that found a node silent: judge again at once.
    let mut again = false;
    let mut health_rx = spec.health.clone();
    let capacity = spec
        .request_resources
        .then(|| spec.source.capacity_requests())
        .flatten()
        .map(capacity::Follower::spawn);
    let ask_capacity = |seen: &Seen| {
        if let Some(c) = &capacity {
            c.ask(&seen.expected, seen.head_resources());
        }
    };
    ask_capacity(&waiter.seen);
    loop {
        let (rejudge, wake) =
            waiter.next_wake(judged_at, std::mem::take(&mut again), asking.as_ref());
        // Only what changed the cluster as seen is judged at once.
        let mut judge = true;
        let facts_changed = async {
            match facts_rx.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else {
                    if let Judged::Done(result) = waiter.timed_out() {
                        return result;
                    }
                    continue;
                };
                let status = spec.status.as_deref();
                // Whatever else has already arrived, coalesced.
                for u in std::iter::once(update).chain(std::iter::from_fn(|| updates.try_recv().ok())) {
                    waiter.seen.apply(u, &described, status);
                }
                ask_capacity(&waiter.seen);
            }
            open = facts_changed => match (open, facts_rx.as_mut()) {
                (true, Some(rx)) => {
                    let facts = rx.borrow_and_update().clone();
                    waiter.seen.set_facts(facts, &spec.expected);
                    ask_capacity(&waiter.seen);
                }
                // The watcher ended: keep its last facts, stop listening.
                _ => facts_rx = None,
            },
            open = async {
                match health_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => match (open, health_rx.as_mut()) {
                (true, Some(rx)) => waiter.seen.health = rx.borrow_and_update().clone(),
                _ => health_rx = None,
            },
            (which, answers) = async {
                match asking.as_mut() {
                    Some(a) => a.next().await,
                    None => std::future::pending().await,
                }
            } => judge = waiter.seen.take_answers(which, answers),
            () = tokio::time::sleep_until(wake.into()) => judge = Instant::now() >= rejudge,
        }
        waiter.seen.hand_to(asking.as_mut());
        if !judge {
            continue;
        }
        judged_at = Instant::now();
        match waiter.judge() {
            // Err from confirm: some node did not answer; judged again
            // without it.
            Judged::Done(Ok(ready)) => match confirm(&mut asking, &mut waiter.seen, ready).await {
                Ok(ready) => return Ok(ready),
                Err(()) => again = true,
            },
            Judged::Done(result) => return result,
            Judged::Waiting => {}
        }
    }
}

/// Before ready stands, every node it counts must have answered when asked
/// itself ([`WaitSpec::ask_nodes`]) within [`ANSWER_STANDS_FOR`]; those
/// without such an answer are asked now, on the kept connections. Err
/// when some did not answer: the view has its nodes back and those nodes
/// are marked silent.
async fn confirm(asking: &mut Option<Asking>, seen: &mut Seen, ready: Ready) -> Result<Ready, ()> {
    let Some(asking) = asking.as_mut() else {
        return Ok(ready);
    };
    let counted: Vec<String> = ready
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.alive)
        .filter(|n| {
            seen.answered
                .get(&n.id)
                .is_none_or(|at| at.elapsed() > ANSWER_STANDS_FOR)
        })
        .map(|n| n.id.clone())
        .collect();
    if counted.is_empty() {
        return Ok(ready);
    }
    let answer = asking.ask_now(&counted).await;
    match answer {
        Ok(silent) if silent.is_empty() => {
            let now = Instant::now();
            for id in counted {
                seen.answered.insert(id, now);
            }
            Ok(ready)
        }
        Ok(silent) => {
            seen.view.nodes = ready.snapshot.nodes;
            let muted = std::mem::take(&mut seen.muted);
            seen.unmute(&muted);
            seen.record_answers(&counted, silent);
            Err(())
        }
        Err(e) => {
            tracing::warn!("cannot ask the nodes themselves ({e}); going by the GCS alone");
            Ok(ready)
        }
    }
}
