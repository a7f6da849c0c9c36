//! The leader's side of the native backend: every rank's orchestrator
//! registers here and keeps a heartbeat; the leader builds the cluster's
//! membership from it (a [`MembershipSource`] for the same wait and
//! health loop as Ray's GCS) and sends each rank its orders (a
//! [`ServingGroup`] for the serve phase). Entry point: [`Rendezvous`].
//!
//! A rank is alive while its heartbeat is fresh and its serving process
//! has not failed in the current run; a failed or lost rank is a dead node
//! to the health policy, whose restart stops the whole group, waits until
//! every rank is present again and starts all of them at once.

use super::protocol::{
    Command, Heartbeat, Leave, Order, ProcessState, Refusal, Registered, Registration,
};
use crate::endpoints::{PostAnswer, PostRoutes};
use crate::membership::{HealthStore, MembershipSource, Reachable, StoreCall};
use crate::serve::{GroupCall, ServingGroup};
use orchestrator_domain::{
    ClusterView, HealthReport, KeyValue, LaunchPlan, MembershipChange, MembershipUpdate, Node,
    Resources, UpdateSource,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The id of rank `rank`'s node in snapshots (`rank-0` is the leader).
pub fn node_id(rank: u32) -> String {
    format!("rank-{rank}")
}

/// How the leader runs its rendezvous.
#[derive(Debug, Clone)]
pub struct RendezvousSettings {
    /// Ranks in the group, the leader included.
    pub(crate) group_size: u32,
    /// How often ranks send a heartbeat.
    pub heartbeat: Duration,
    /// After how long without one a rank is lost.
    pub timeout: Duration,
    /// The leader's own node (rank 0).
    pub leader: Node,
    /// The group secret's key: every request must be signed with it and
    /// every answer is. None: an insecure group.
    pub key: Option<super::auth::GroupKey>,
}

/// One registered rank.
#[derive(Debug, Clone)]
struct Member {
    registration: Registration,
    registered_ms: u64,
    last_seen: Instant,
    generation: u64,
    process: ProcessState,
    /// Why it is not alive: its process failed in the current run, it
    /// left, or it was lost.
    down: Option<String>,
    /// Lost or left: heartbeats are refused until it registers again.
    gone: bool,
    /// Its last node-health report.
    report: Option<HealthReport>,
    /// Its server's stage, as it last reported it.
    stage: Option<orchestrator_domain::RankStage>,
    /// What it last said of its process for a stall's diagnosis.
    diagnosis: crate::serve::RankDiagnosis,
    /// Its last preflight result.
    preflight: Option<super::protocol::PreflightDone>,
}

/// The order in force.
#[derive(Debug, Clone, Default)]
struct Current {
    generation: u64,
    kind: OrderKind,
}

#[derive(Debug, Clone, Default)]
enum OrderKind {
    #[default]
    Wait,
    /// Run `plan`; only the runs it was given to start it. An open order
    /// (an early launch, while ranks register) is also given to every
    /// rank that registers after it.
    Run {
        plan: Box<LaunchPlan>,
        to: BTreeMap<u32, String>,
        open: bool,
    },
    Stop,
    /// Every rank present runs its part of the gang preflight.
    Preflight(super::protocol::PreflightOrder),
}

/// A node of the view and, when it is dead, why.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    node: Node,
    down: Option<String>,
}

struct Shared {
    settings: RendezvousSettings,
    leader_run: String,
    members: Mutex<BTreeMap<u32, Member>>,
    order: watch::Sender<Current>,
    view: watch::Sender<Arc<Vec<Entry>>>,
    /// The leader's own node-health report.
    own_report: Mutex<Option<HealthReport>>,
    /// Requests refused so far (their log lines are rate-limited).
    refusals: std::sync::atomic::AtomicU64,
    /// A rank's process exited under the open (early) order: the early
    /// launch cannot go on, the group starts again at ready.
    early_failed: std::sync::atomic::AtomicBool,
    /// Start failures ranks reported, not yet taken by the serve phase.
    failures: Mutex<Vec<orchestrator_domain::StartupFailure>>,
    /// Ranks whose stacks the serve phase wants, for a stall: rank ->
    /// what the rank is asked.
    stacks_wanted: Mutex<BTreeMap<u32, super::protocol::StacksWanted>>,
}

/// The rendezvous. Cheap to clone; the sweep of lost ranks runs while any
/// clone lives on a runtime that [`spawn_sweep`](Self::spawn_sweep)
/// started it on.
#[derive(Clone)]
pub struct Rendezvous {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("group_size", &self.shared.settings.group_size)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new run id: the time in ns and the process id, enough to tell runs
/// apart.
pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

impl Rendezvous {
    /// A rendezvous for a group; no rank but the leader is present yet.
    pub fn new(settings: RendezvousSettings) -> Self {
        let (order, _) = watch::channel(Current::default());
        let (view, _) = watch::channel(Arc::new(Vec::new()));
        let rendezvous = Self {
            shared: Arc::new(Shared {
                settings,
                leader_run: run_id(),
                members: Mutex::new(BTreeMap::new()),
                order,
                view,
                own_report: Mutex::new(None),
                refusals: std::sync::atomic::AtomicU64::new(0),
                early_failed: std::sync::atomic::AtomicBool::new(false),
                failures: Mutex::new(Vec::new()),
                stacks_wanted: Mutex::new(BTreeMap::new()),
            }),
        };
        rendezvous.publish();
        rendezvous
    }

    /// Counts ranks lost whose heartbeat stopped, every half heartbeat,
    /// until the returned task is aborted or dropped with the runtime.
    pub(crate) fn spawn_sweep(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.shared.settings.heartbeat / 2);
            loop {
                tick.tick().await;
                this.sweep();
            }
        })
    }

    fn sweep(&self) {
        let timeout = self.shared.settings.timeout;
        let mut lost = Vec::new();
        self.with_members(|members| {
            for (rank, m) in members.iter_mut() {
                if !m.gone && m.last_seen.elapsed() > timeout {
                    m.gone = true;
                    let reason = format!(
                        "no heartbeat from rank {rank} ({}) for {} ms: rank lost",
                        m.registration.address,
                        m.last_seen.elapsed().as_millis()
                    );
                    lost.push(reason.clone());
                    m.down = Some(reason);
                }
            }
        });
        for reason in &lost {
            tracing::warn!("{reason}");
        }
        if !lost.is_empty() {
            self.publish();
        }
    }

    fn with_members<R>(&self, f: impl FnOnce(&mut BTreeMap<u32, Member>) -> R) -> R {
        match self.shared.members.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Rebuilds the view from the members.
    fn publish(&self) {
        let leader = self.shared.settings.leader.clone();
        let mut entries = vec![Entry {
            node: leader,
            down: None,
        }];
        self.with_members(|members| {
            for (rank, m) in members.iter() {
                let r = &m.registration;
                entries.push(Entry {
                    node: Node {
                        id: node_id(*rank),
                        address: r.address.clone(),
                        hostname: r.hostname.clone(),
                        is_head: false,
                        alive: m.down.is_none(),
                        resources: Resources {
                            cpu: r.cpus,
                            gpu: r.gpus,
                            ..Resources::default()
                        },
                        labels: vec![KeyValue::new("rank", rank.to_string())],
                        start_time_ms: m.registered_ms,
                        ..Node::default()
                    },
                    down: m.down.clone(),
                });
            }
        });
        let entries = Arc::new(entries);
        self.shared.view.send_if_modified(|v| {
            if **v == *entries {
                false
            } else {
                *v = Arc::clone(&entries);
                true
            }
        });
    }

    /// The nodes as they are now, the leader first.
    pub fn nodes(&self) -> Vec<Node> {
        self.shared
            .view
            .borrow()
            .iter()
            .map(|e| e.node.clone())
            .collect()
    }

    /// The group as it will be once every rank is present, for a plan
    /// made before (an early launch): the ranks present as they are, the
    /// missing ones shaped like the leader.
    pub(crate) fn expected_cluster(
        &self,
        deadline_ms: u64,
    ) -> orchestrator_domain::ClusterSnapshot {
        let size = self.shared.settings.group_size;
        let leader = self.shared.settings.leader.clone();
        let present = self.nodes();
        let nodes = (0..size)
            .map(|rank| {
                let id = if rank == 0 {
                    leader.id.clone()
                } else {
                    node_id(rank)
                };
                present
                    .iter()
                    .find(|n| n.id == id && n.alive)
                    .cloned()
                    .unwrap_or_else(|| Node {
                        id,
                        address: format!("rank-{rank}"),
                        hostname: format!("rank-{rank}"),
                        is_head: rank == 0,
                        alive: true,
                        ..leader.clone()
                    })
            })
            .collect();
        orchestrator_domain::ClusterSnapshot {
            nodes,
            expected: orchestrator_domain::Topology {
                nodes: size,
                ..orchestrator_domain::Topology::default()
            },
            elapsed_ms: 0,
            deadline_ms,
            diagnostics: Vec::new(),
        }
    }

    /// Ranks present (registered and heard from), the leader included.
    pub fn present(&self) -> u32 {
        1 + self.with_members(|m| m.values().filter(|m| !m.gone).count() as u32)
    }

    /// The ranks that have not registered (or were lost), for messages.
    pub fn missing(&self) -> Vec<u32> {
        let size = self.shared.settings.group_size;
        self.with_members(|m| {
            (1..size)
                .filter(|r| m.get(r).is_none_or(|m| m.gone))
                .collect()
        })
    }

    /// A rank's registration.
    pub fn register(&self, r: Registration) -> Result<Registered, (u16, Refusal)> {
        let size = self.shared.settings.group_size;
        let refuse = |error: String, permanent: bool| Err((409, Refusal { error, permanent }));
        if r.group_size != size {
            return refuse(
                format!(
                    "rank {} was configured for a group of {} nodes but the leader's group has {size}: give every pod the same group size (LWS_GROUP_SIZE or native.group-size)",
                    r.rank, r.group_size
                ),
                true,
            );
        }
        if let Err(problem) = r.check() {
            self.refused_once(&format!("rank {}: {problem}", r.rank));
            return refuse(problem.to_string(), true);
        }
        if r.rank == 0 {
            return refuse(
                format!(
                    "rank 0 is the leader's, and the leader ({}) is running: two pods claim rank 0; check LWS_WORKER_INDEX or native.rank on {}",
                    self.shared.settings.leader.address, r.address
                ),
                true,
            );
        }
        if r.rank >= size {
            return refuse(
                format!(
                    "rank {} is out of range for a group of {size} nodes (ranks 0 to {}); check LWS_WORKER_INDEX or native.rank on {}",
                    r.rank,
                    size - 1,
                    r.address
                ),
                true,
            );
        }
        let timeout = self.shared.settings.timeout;
        let held = self.with_members(|members| {
            if let Some(m) = members.get(&r.rank)
                && !m.gone
                && m.registration.instance != r.instance
                && m.last_seen.elapsed() <= timeout
            {
                return Some(format!(
                    "rank {} is already held by {} ({}), heard from {} ms ago: two pods claim rank {}; check LWS_WORKER_INDEX or native.rank. If that pod is gone, the rank is freed {} ms after its last heartbeat",
                    r.rank,
                    m.registration.hostname,
                    m.registration.address,
                    m.last_seen.elapsed().as_millis(),
                    r.rank,
                    timeout.as_millis()
                ));
            }
            let again = members
                .get(&r.rank)
                .is_some_and(|m| m.registration.instance == r.instance && !m.gone);
            if !again {
                tracing::info!(
                    rank = r.rank,
                    address = %r.address,
                    gpus = r.gpus,
                    "rank registered"
                );
                members.insert(
                    r.rank,
                    Member {
                        registration: r.clone(),
                        registered_ms: now_ms(),
                        last_seen: Instant::now(),
                        generation: 0,
                        process: ProcessState::Idle,
                        down: None,
                        gone: false,
                        report: None,
                        stage: None,
                        diagnosis: crate::serve::RankDiagnosis::default(),
                        preflight: None,
                    },
                );
            }
            None
        });
        if let Some(error) = held {
            return refuse(error, false);
        }
        self.give_open_order(r.rank, &r.instance);
        self.publish();
        Ok(Registered {
            leader: self.shared.leader_run.clone(),
            heartbeat_ms: self.shared.settings.heartbeat.as_millis() as u64,
            timeout_ms: timeout.as_millis() as u64,
        })
    }

    /// Logs why a request was refused: the first of each kind, then one
    /// line in every 100, so a hostile peer cannot flood the log.
    fn refused_once(&self, why: &str) {
        let n = self
            .shared
            .refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(100) {
            // Peer text on one line: no forged log lines.
            let why = why.replace(['\n', '\r'], " ");
            tracing::warn!(refused = n + 1, "rendezvous: refused a request: {why}");
        }
    }

    /// A heartbeat: records what the rank reports, then answers with its
    /// order, held up to one heartbeat interval while the rank already
    /// carried out the order in force.
    pub async fn heartbeat(&self, h: Heartbeat) -> Result<Order, (u16, Refusal)> {
        if h.leader != self.shared.leader_run {
            return Err(gone(
                "this rank registered with another run of the leader (it restarted): register again",
            ));
        }
        let current = self.shared.order.borrow().clone();
        let known = self.with_members(|members| {
            let Some(m) = members.get_mut(&h.rank) else {
                return false;
            };
            if m.gone || m.registration.instance != h.instance {
                return false;
            }
            m.last_seen = Instant::now();
            m.generation = h.generation;
            m.process = h.process.clone();
            record_startup(m, &h);
            match &h.report {
                // A report only about the sender's own node.
                Some(report) if report.node_id == node_id(h.rank) => {
                    m.report = Some(report.clone())
                }
                Some(report) => {
                    let why = format!(
                        "rank {} sent a node-health report about {:?}; only its own ({}) is taken",
                        h.rank,
                        report.node_id.chars().take(64).collect::<String>(),
                        node_id(h.rank)
                    );
                    self.refused_once(&why);
                }
                None => {}
            }
            if let (OrderKind::Run { to, open: true, .. }, ProcessState::Exited(how)) =
                (&current.kind, &h.process)
                && h.generation == current.generation
                && to.get(&h.rank) == Some(&h.instance)
                && !self.shared.early_failed.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                // Not counted dead: the wait goes on, and the whole group
                // starts again at ready.
                tracing::warn!(
                    "rank {}'s early-launched serving process on {} {}: the group starts again once it is ready",
                    h.rank,
                    m.registration.address,
                    describe_exit(how)
                );
            } else if let (OrderKind::Run { to, open: false, .. }, ProcessState::Exited(how)) =
                (&current.kind, &h.process)
                && h.generation == current.generation
                && to.get(&h.rank) == Some(&h.instance)
                && m.down.is_none()
            {
                let reason = format!(
                    "rank {}'s serving process on {} {}",
                    h.rank,
                    m.registration.address,
                    describe_exit(how)
                );
                tracing::warn!("{reason}");
                m.down = Some(reason);
                if let Some(failure) = h.startup.as_ref().and_then(|s| s.failure.as_ref()) {
                    let failure = from_rank(failure, h.rank, &m.registration.address, how);
                    match self.shared.failures.lock() {
                        Ok(mut f) => f.push(failure),
                        Err(poisoned) => poisoned.into_inner().push(failure),
                    }
                }
            }
            true
        });
        if !known {
            return Err(gone(
                "the leader does not know this run of the rank (it was counted lost or left): register again",
            ));
        }
        self.publish();
        let mut order = self.shared.order.subscribe();
        if order.borrow().generation == h.generation {
            let _ = tokio::time::timeout(self.shared.settings.heartbeat, order.changed()).await;
        }
        let current = order.borrow().clone();
        Ok(self.order_for(&current, h.rank, &h.instance))
    }

    /// A rank leaving on a clean stop.
    pub fn leave(&self, l: &Leave) {
        let left = self.with_members(|members| match members.get_mut(&l.rank) {
            Some(m) if m.registration.instance == l.instance && !m.gone => {
                m.gone = true;
                m.down = Some(format!("rank {} left (its orchestrator stopped)", l.rank));
                true
            }
            _ => false,
        });
        if left {
            tracing::info!(rank = l.rank, "rank left");
            self.publish();
        }
    }

    fn order_for(&self, current: &Current, rank: u32, instance: &str) -> Order {
        let command = match &current.kind {
            OrderKind::Wait => Command::Wait,
            OrderKind::Stop => Command::Stop,
            OrderKind::Preflight(check) => Command::Preflight(check.clone()),
            OrderKind::Run { plan, to, .. } if to.get(&rank).is_some_and(|i| i == instance) => {
                match plan.ranks.iter().find(|p| p.rank == rank) {
                    Some(p) => {
                        // Secret values stay on the leader: the rank has
                        // its own copy in its environment (its Secret).
                        let rules = orchestrator_domain::secrets::secrets();
                        let (secret, env): (Vec<KeyValue>, Vec<KeyValue>) = p
                            .env
                            .iter()
                            .cloned()
                            .partition(|kv| rules.is_secret_name(&kv.key));
                        Command::Run {
                            argv: p.argv.clone(),
                            env,
                            from_own_env: secret.into_iter().map(|kv| kv.key).collect(),
                        }
                    }
                    None => Command::Wait,
                }
            }
            // A run that joined after the order: it waits for the next.
            OrderKind::Run { .. } => Command::Wait,
        };
        let stacks_wanted = match self.shared.stacks_wanted.lock() {
            Ok(w) => w.get(&rank).copied(),
            Err(p) => p.into_inner().get(&rank).copied(),
        };
        Order {
            generation: current.generation,
            command,
            stacks_wanted,
        }
    }

    /// Under an open (early) order, a rank that registers is given it too
    /// (its run replaces an earlier one of the same rank); no heartbeat
    /// held for an order is woken (the order's generation is unchanged).
    fn give_open_order(&self, rank: u32, instance: &str) {
        self.shared.order.send_if_modified(|c| {
            if let OrderKind::Run { to, open: true, .. } = &mut c.kind
                && to.get(&rank).is_none_or(|i| i != instance)
            {
                tracing::info!(
                    rank,
                    generation = c.generation,
                    "rank registered during the early launch: told to start"
                );
                to.insert(rank, instance.to_string());
            }
            false
        });
    }

    /// Tells every rank present, and every rank that registers until
    /// [`close_early`](Self::close_early), to start its part of `plan`
    /// (an early launch: vLLM's own rendezvous waits for the others).
    pub(crate) fn start_early(&self, plan: &LaunchPlan) {
        self.shared
            .early_failed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let to = self.with_members(|members| {
            members
                .iter()
                .filter(|(_, m)| !m.gone)
                .map(|(rank, m)| (*rank, m.registration.instance.clone()))
                .collect()
        });
        let generation = self.set_order(OrderKind::Run {
            plan: Box::new(plan.clone()),
            to,
            open: true,
        });
        tracing::info!(
            generation,
            "early launch: told every rank present to start, and every rank that registers"
        );
    }

    /// Ends the early launch's open order (ranks that register later wait
    /// for the next order); whether every rank's early process still runs
    /// as far as the leader heard (no exit under the early order, and
    /// every rank was given it).
    pub(crate) fn close_early(&self) -> bool {
        let mut told = BTreeMap::new();
        self.shared.order.send_if_modified(|c| {
            if let OrderKind::Run { to, open, .. } = &mut c.kind {
                *open = false;
                told = to.clone();
            }
            false
        });
        let size = self.shared.settings.group_size;
        let all_told = self.with_members(|members| {
            (1..size).all(|rank| {
                members
                    .get(&rank)
                    .is_some_and(|m| !m.gone && told.get(&rank) == Some(&m.registration.instance))
            })
        });
        all_told
            && !self
                .shared
                .early_failed
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The gang preflight over every rank present: each other rank is
    /// told to run its part (`order`), rank 0's runs here (expecting
    /// `own_gpus`), and the results are gathered until every rank
    /// reported or the check's limit passed.
    pub(crate) async fn preflight(
        &self,
        spec: &crate::preflight::PreflightSpec,
        order: super::protocol::PreflightOrder,
        own_gpus: u32,
    ) -> crate::preflight::PreflightResult {
        let started = Instant::now();
        let world = order.world;
        let master = order.master.clone();
        let env: Vec<(String, String)> = order
            .env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let python = std::path::PathBuf::from(&order.python);
        let mut addresses: BTreeMap<u32, String> = self.with_members(|members| {
            members
                .iter()
                .map(|(r, m)| (*r, m.registration.address.clone()))
                .collect()
        });
        addresses.insert(0, self.shared.settings.leader.address.clone());
        let generation = self.set_order(OrderKind::Preflight(order));
        tracing::info!(generation, world, %master, "gang preflight: every rank checks the group's collective");
        let own =
            crate::preflight::check_rank(spec, &python, 0, world, &master, Some(own_gpus), &env);
        tokio::pin!(own);
        let deadline = started + spec.limit();
        // Once rank 0 (the master) finished, every rank that joined is
        // done too: the others get a few heartbeats to report.
        let grace = Duration::from_secs(5) + self.shared.settings.heartbeat * 2;
        let mut own_result: Option<(crate::preflight::RankCheck, Instant)> = None;
        let mut ranks = loop {
            let done: Vec<crate::preflight::RankCheck> = self.with_members(|members| {
                members
                    .values()
                    .filter_map(|m| m.preflight.as_ref())
                    .filter(|p| p.generation == generation)
                    .map(|p| p.check.clone())
                    .collect()
            });
            let now = Instant::now();
            let all = done.len() as u32 + 1 >= world && own_result.is_some();
            let late = own_result
                .as_ref()
                .is_some_and(|(_, at)| now >= *at + grace);
            if all || late || now >= deadline {
                break done;
            }
            tokio::select! {
                check = &mut own, if own_result.is_none() => own_result = Some((check, Instant::now())),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        let own = match own_result {
            Some((check, _)) => check,
            None => crate::preflight::RankCheck::failed(
                0,
                &self.shared.settings.leader.address,
                format!(
                    "the check did not finish within {} s",
                    spec.limit().as_secs()
                ),
            ),
        };
        ranks.push(crate::preflight::RankCheck { rank: 0, ..own });
        self.set_order(OrderKind::Wait);
        crate::preflight::judge(spec, world, &addresses, ranks, started.elapsed())
    }

    fn set_order(&self, kind: OrderKind) -> u64 {
        let mut generation = 0;
        self.shared.order.send_modify(|c| {
            c.generation += 1;
            c.kind = kind;
            generation = c.generation;
        });
        generation
    }
}

/// What a heartbeat says of the rank's start: its last preflight, its
/// server's stage and what it says for a stall's diagnosis.
fn record_startup(m: &mut Member, h: &Heartbeat) {
    if let Some(done) = &h.preflight {
        m.preflight = Some(super::protocol::PreflightDone {
            generation: done.generation,
            check: crate::preflight::RankCheck {
                rank: h.rank,
                ..done.check.clone().bounded()
            },
        });
    }
    if let Some(startup) = &h.startup {
        m.stage = Some(orchestrator_domain::RankStage {
            rank: h.rank,
            node: m.registration.address.clone(),
            stage: startup.stage,
            since_unix_ms: startup.since_unix_ms,
            pid: None,
        });
        m.diagnosis = crate::serve::RankDiagnosis {
            rank: h.rank,
            stopped: startup.stopped,
            stacks: startup
                .stacks
                .clone()
                .map(crate::serve::RankStacks::bounded),
        };
    }
}

fn gone(error: &str) -> (u16, Refusal) {
    (
        410,
        Refusal {
            error: error.to_string(),
            permanent: false,
        },
    )
}

/// `exited with code 1`, `was killed by signal 9`.
pub(crate) fn describe_exit(how: &orchestrator_domain::ExitStatus) -> String {
    match (how.code, how.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "could not be started".to_string(),
    }
}

/// A failure as a rank reported it, taken only as far as a peer may say:
/// its own rank, node and exit; the exception and at most
/// [`FAILURE_LINES`](orchestrator_domain::startup::FAILURE_LINES) lines,
/// each bounded and cleaned.
fn from_rank(
    f: &orchestrator_domain::StartupFailure,
    rank: u32,
    address: &str,
    how: &orchestrator_domain::ExitStatus,
) -> orchestrator_domain::StartupFailure {
    use orchestrator_domain::startup::{FAILURE_LINES, shown_line};
    orchestrator_domain::StartupFailure {
        rank,
        node: address.to_string(),
        stage: f.stage,
        exit: how.clone(),
        exception: f.exception.as_deref().map(shown_line),
        last_lines: f
            .last_lines
            .iter()
            .rev()
            .take(FAILURE_LINES)
            .rev()
            .map(|l| shown_line(l))
            .collect(),
        at_unix_ms: now_ms(),
        identical: 1,
    }
}

impl ServingGroup for Rendezvous {
    fn start(&self, plan: &LaunchPlan) -> Vec<Node> {
        let to = self.with_members(|members| {
            let mut to = BTreeMap::new();
            for (rank, m) in members.iter_mut() {
                if !m.gone {
                    m.down = None;
                    to.insert(*rank, m.registration.instance.clone());
                }
            }
            to
        });
        let ranks: Vec<u32> = to.keys().copied().collect();
        let generation = self.set_order(OrderKind::Run {
            plan: Box::new(plan.clone()),
            to,
            open: false,
        });
        tracing::info!(generation, ?ranks, "told every rank to start");
        self.publish();
        self.nodes()
    }

    fn stop(&self, grace: Duration) -> GroupCall<'_> {
        Box::pin(async move {
            let generation = self.set_order(OrderKind::Stop);
            let deadline = Instant::now() + grace + self.shared.settings.heartbeat * 2;
            let mut view = self.shared.view.subscribe();
            loop {
                let running: Vec<u32> = self.with_members(|members| {
                    members
                        .iter()
                        .filter(|(_, m)| {
                            !m.gone
                                && (m.generation < generation
                                    || matches!(m.process, ProcessState::Running))
                        })
                        .map(|(r, _)| *r)
                        .collect()
                });
                if running.is_empty() {
                    tracing::info!(generation, "every rank stopped");
                    return;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(?running, "ranks did not confirm the stop in time; going on");
                    return;
                }
                let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), view.changed())
                    .await;
            }
        })
    }

    fn stages(&self) -> Vec<orchestrator_domain::RankStage> {
        self.with_members(|members| {
            members
                .values()
                .filter(|m| !m.gone)
                .filter_map(|m| m.stage.clone())
                .collect()
        })
    }

    fn diagnoses(&self) -> Vec<crate::serve::RankDiagnosis> {
        self.with_members(|members| {
            members
                .values()
                .filter(|m| !m.gone)
                .map(|m| m.diagnosis.clone())
                .collect()
        })
    }

    fn want_stacks(&self, rank: u32, since_unix_ms: u64, deadline_ms: u64) {
        let wanted = super::protocol::StacksWanted {
            since_unix_ms,
            deadline_ms,
        };
        match self.shared.stacks_wanted.lock() {
            Ok(mut w) => w.insert(rank, wanted),
            Err(p) => p.into_inner().insert(rank, wanted),
        };
    }

    fn take_failures(&self) -> Vec<orchestrator_domain::StartupFailure> {
        match self.shared.failures.lock() {
            Ok(mut f) => std::mem::take(&mut *f),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }

    fn assembled(&self) -> GroupCall<'_> {
        Box::pin(async move {
            let mut view = self.shared.view.subscribe();
            let mut announced = false;
            loop {
                let missing = self.missing();
                if missing.is_empty() {
                    return;
                }
                if !announced {
                    tracing::info!(
                        ?missing,
                        "waiting for every rank to be present before starting the group again"
                    );
                    announced = true;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), view.changed()).await;
            }
        })
    }
}

impl MembershipSource for Rendezvous {
    fn watch(&self) -> mpsc::UnboundedReceiver<MembershipUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut view = self.shared.view.subscribe();
        tokio::spawn(async move {
            let mut previous: Arc<Vec<Entry>> = view.borrow_and_update().clone();
            let first = MembershipUpdate {
                view: Some(ClusterView::from_nodes(
                    previous.iter().map(|e| e.node.clone()).collect(),
                )),
                changes: Vec::new(),
                source: UpdateSource::Snapshot,
                received_at: Instant::now(),
            };
            if tx.send(first).is_err() {
                return;
            }
            while view.changed().await.is_ok() {
                let now = view.borrow_and_update().clone();
                let changes = diff(&previous, &now);
                previous = now;
                if changes.is_empty() {
                    continue;
                }
                let update = MembershipUpdate {
                    view: None,
                    changes,
                    source: UpdateSource::Push,
                    received_at: Instant::now(),
                };
                if tx.send(update).is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn describe(&self) -> String {
        format!(
            "the native rendezvous on the leader ({}, a group of {})",
            self.shared.settings.leader.address, self.shared.settings.group_size
        )
    }

    fn reachable(&self, _limit: Duration) -> Reachable<'_> {
        Box::pin(async { Ok(()) })
    }

    fn health_store(&self) -> Option<Arc<dyn HealthStore>> {
        Some(Arc::new(self.clone()))
    }
}

/// Node-health reports travel with the heartbeats: the leader's board
/// reads every rank's last one here, and the leader's own reporter
/// publishes rank 0's (and, in `orchestrator local --backend native`,
/// those of the ranks it runs in its own process).
impl HealthStore for Rendezvous {
    /// The leader's node; a rank this process runs itself (`local
    /// --backend native`) by its label (`rank-N`) once it registered.
    fn own_node<'a>(
        &'a self,
        label: &'a str,
        _address: Option<&'a str>,
        _hostname: &'a str,
    ) -> StoreCall<'a, Option<Node>> {
        let leader = &self.shared.settings.leader;
        let node = if label == leader.id || label.is_empty() {
            Some(leader.clone())
        } else {
            self.nodes().into_iter().find(|n| n.id == label && n.alive)
        };
        Box::pin(async move { Ok(node) })
    }

    fn publish<'a>(&'a self, report: &'a HealthReport) -> StoreCall<'a, ()> {
        if report.node_id == node_id_of_leader() {
            if let Ok(mut own) = self.shared.own_report.lock() {
                *own = Some(report.clone());
            }
        } else {
            // A rank this process checks itself: taken while it is a member.
            self.with_members(|members| {
                if let Some(m) = members
                    .iter_mut()
                    .find(|(rank, _)| node_id(**rank) == report.node_id)
                    .map(|(_, m)| m)
                {
                    m.report = Some(report.clone());
                }
            });
        }
        Box::pin(async { Ok(()) })
    }

    fn withdraw<'a>(&'a self, node_id: &'a str) -> StoreCall<'a, ()> {
        if node_id == node_id_of_leader()
            && let Ok(mut own) = self.shared.own_report.lock()
        {
            *own = None;
        }
        Box::pin(async { Ok(()) })
    }

    fn reports(&self) -> StoreCall<'_, Vec<HealthReport>> {
        let mut reports: Vec<HealthReport> = self
            .shared
            .own_report
            .lock()
            .ok()
            .and_then(|own| own.clone())
            .into_iter()
            .collect();
        reports.extend(self.with_members(|members| {
            members
                .values()
                .filter_map(|m| m.report.clone())
                .collect::<Vec<_>>()
        }));
        Box::pin(async move { Ok(reports) })
    }
}

fn node_id_of_leader() -> String {
    node_id(0)
}

/// Joins and deaths between two views.
fn diff(before: &[Entry], after: &[Entry]) -> Vec<MembershipChange> {
    let mut changes = Vec::new();
    for e in after {
        let was = before.iter().find(|b| b.node.id == e.node.id);
        let was_alive = was.is_some_and(|b| b.node.alive);
        let replaced = was.is_some_and(|b| b.node.start_time_ms != e.node.start_time_ms);
        match (was_alive, e.node.alive) {
            (false, true) => changes.push(MembershipChange::Joined(e.node.clone())),
            (true, false) => changes.push(MembershipChange::Died {
                node: e.node.clone(),
                reason: e.down.clone(),
            }),
            (true, true) if replaced => changes.push(MembershipChange::Joined(e.node.clone())),
            _ => {}
        }
    }
    changes
}

/// The rendezvous's HTTP routes.
impl PostRoutes for Rendezvous {
    fn post(&self, path: &str, body: bytes::Bytes) -> Option<PostAnswer> {
        use super::protocol::{HEARTBEAT, LEAVE, REGISTER};
        fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (u16, String)> {
            serde_json::from_slice(body).map_err(|e| {
                (
                    400,
                    json(&Refusal {
                        error: format!("the request is not understood: {e}"),
                        permanent: true,
                    }),
                )
            })
        }
        fn json<T: serde::Serialize>(value: &T) -> String {
            serde_json::to_string(value).unwrap_or_default()
        }
        fn answer<T: serde::Serialize>(r: Result<T, (u16, Refusal)>) -> (u16, String) {
            match r {
                Ok(v) => (200, json(&v)),
                Err((code, refusal)) => (code, json(&refusal)),
            }
        }
        if ![REGISTER, HEARTBEAT, LEAVE].contains(&path) {
            return None;
        }
        let this = self.clone();
        let path = path.to_string();
        Some(Box::pin(async move {
            // With a secret: the request opened (who signed it, the nonce
            // its answer is bound to), the answer sealed.
            let (signer, nonce, body) = match &this.shared.settings.key {
                None => (None, None, body),
                Some(key) => match key.open(&path, &body) {
                    Ok((rank, nonce, body)) => (Some(rank), Some(nonce), bytes::Bytes::from(body)),
                    Err(why) => {
                        let why = why.to_string();
                        this.refused_once(&why);
                        let refusal = Refusal {
                            error: format!("not authenticated: {why}"),
                            permanent: false,
                        };
                        return (401, json(&refusal));
                    }
                },
            };
            let mismatch = |rank: u32| {
                signer.filter(|s| *s != rank).map(|s| {
                    let why = format!("rank {s} sent a message about rank {rank}");
                    this.refused_once(&why);
                    (
                        403,
                        json(&Refusal {
                            error: why,
                            permanent: true,
                        }),
                    )
                })
            };
            let (code, text) = match path.as_str() {
                REGISTER => match parse::<Registration>(&body) {
                    Ok(r) => mismatch(r.rank).unwrap_or_else(|| answer(this.register(r))),
                    Err(e) => e,
                },
                HEARTBEAT => match parse::<Heartbeat>(&body) {
                    Ok(h) => match mismatch(h.rank) {
                        Some(refused) => refused,
                        None => answer(this.heartbeat(h).await),
                    },
                    Err(e) => e,
                },
                _ => match parse::<Leave>(&body) {
                    Ok(l) => mismatch(l.rank).unwrap_or_else(|| {
                        this.leave(&l);
                        (200, "{}".to_string())
                    }),
                    Err(e) => e,
                },
            };
            match (&this.shared.settings.key, nonce) {
                (Some(key), Some(nonce)) => (code, key.seal_answer(&path, &nonce, code, text)),
                _ => (code, text),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendezvous(size: u32) -> Rendezvous {
        rendezvous_with(size, None)
    }

    fn rendezvous_with(size: u32, key: Option<super::super::auth::GroupKey>) -> Rendezvous {
        Rendezvous::new(RendezvousSettings {
            key,
            group_size: size,
            heartbeat: Duration::from_millis(100),
            timeout: Duration::from_millis(400),
            leader: Node {
                id: node_id(0),
                address: "10.0.0.1".into(),
                is_head: true,
                alive: true,
                ..Node::default()
            },
        })
    }

    fn registration(rank: u32, instance: &str) -> Registration {
        Registration {
            rank,
            group_size: 3,
            instance: instance.into(),
            address: format!("10.0.0.{}", rank + 1),
            hostname: format!("pod-{rank}"),
            gpus: 1.0,
            cpus: 4.0,
        }
    }

    async fn post(r: &Rendezvous, path: &str, body: String) -> (u16, String) {
        match PostRoutes::post(r, path, bytes::Bytes::from(body)) {
            Some(answer) => answer.await,
            None => (404, String::new()),
        }
    }

    #[tokio::test]
    async fn with_a_secret_strangers_forgers_and_impossible_claims_are_refused() {
        use super::super::auth::GroupKey;
        use super::super::protocol::{HEARTBEAT, REGISTER};
        let key = GroupKey::new(b"the-group-secret-0123", "test").unwrap();
        let stranger = GroupKey::new(b"a-strangers-secret-0123", "test").unwrap();
        let r = rendezvous_with(3, Some(key.clone()));
        let json = |reg: &Registration| serde_json::to_string(reg).unwrap();
        // Unsealed, or sealed with another secret: 401, no rank taken.
        let (code, _) = post(&r, REGISTER, json(&registration(1, "x"))).await;
        assert_eq!(code, 401);
        let (wire, _) = stranger.seal(1, REGISTER, json(&registration(1, "x")));
        assert_eq!(post(&r, REGISTER, wire).await.0, 401);
        assert_eq!(r.present(), 1, "only the leader");
        // Signed by rank 2 but about rank 1: 403.
        let (wire, _) = key.seal(2, REGISTER, json(&registration(1, "x")));
        assert_eq!(post(&r, REGISTER, wire).await.0, 403);
        // An impossible GPU count: refused, the leader goes on.
        for gpus in [-1.0, f64::from(u32::MAX), 1e300] {
            let mut bad = registration(1, "x");
            bad.gpus = gpus;
            let (wire, _) = key.seal(1, REGISTER, json(&bad));
            assert_eq!(post(&r, REGISTER, wire).await.0, 409, "{gpus}");
        }
        // The real rank: taken; the answer opens only for its request.
        let (wire, nonce) = key.seal(1, REGISTER, json(&registration(1, "a")));
        let (code, answer) = post(&r, REGISTER, wire.clone()).await;
        assert_eq!(code, 200);
        let registered: Registered =
            serde_json::from_str(&key.open_answer(REGISTER, &nonce, code, &answer).unwrap())
                .unwrap();
        assert!(
            stranger
                .open_answer(REGISTER, &nonce, code, &answer)
                .is_err()
        );
        // The same request replayed: refused.
        assert_eq!(post(&r, REGISTER, wire).await.0, 401);
        // A report about another node is not taken.
        let report = orchestrator_domain::HealthReport {
            node_id: node_id(2),
            seq: 1,
            interval_ms: 1000,
            written_at_ms: now_ms(),
            verdict: orchestrator_domain::NodeVerdict::Unhealthy("forged".into()),
            readings: orchestrator_domain::NodeReadings::default(),
            local_copy: None,
        };
        let beat = Heartbeat {
            rank: 1,
            instance: "a".into(),
            leader: registered.leader,
            generation: 0,
            process: ProcessState::Idle,
            report: Some(report),
            startup: None,
            preflight: None,
        };
        let (wire, _) = key.seal(1, HEARTBEAT, serde_json::to_string(&beat).unwrap());
        assert_eq!(post(&r, HEARTBEAT, wire).await.0, 200);
        let taken = r.with_members(|m| m.get(&1).and_then(|m| m.report.clone()));
        assert!(
            taken.is_none(),
            "a report about rank 2 from rank 1 was taken"
        );
    }

    #[tokio::test]
    async fn secret_launch_values_are_not_sent_in_orders() {
        let r = rendezvous(2);
        let mut reg = registration(1, "a");
        reg.group_size = 2;
        let registered = r.register(reg).unwrap();
        let plan = LaunchPlan {
            argv: vec!["vllm".into()],
            ranks: vec![orchestrator_domain::RankPlan {
                rank: 1,
                argv: vec!["vllm".into(), "--headless".into()],
                env: vec![
                    KeyValue::new("HF_TOKEN", "hf_canary"),
                    KeyValue::new("VLLM_HOST_IP", "10.0.0.2"),
                ],
            }],
            ..LaunchPlan::default()
        };
        r.start(&plan);
        let order = r
            .heartbeat(Heartbeat {
                rank: 1,
                instance: "a".into(),
                leader: registered.leader,
                generation: 0,
                process: ProcessState::Idle,
                report: None,
                startup: None,
                preflight: None,
            })
            .await
            .unwrap();
        let wire = serde_json::to_string(&order).unwrap();
        assert!(!wire.contains("hf_canary"), "{wire}");
        assert!(
            wire.contains("VLLM_HOST_IP") && wire.contains("HF_TOKEN"),
            "{wire}"
        );
    }

    #[test]
    fn duplicate_out_of_range_and_mismatched_ranks_are_refused_with_the_fix() {
        let r = rendezvous(3);
        assert!(r.register(registration(1, "a")).is_ok());
        // The same run again is fine.
        assert!(r.register(registration(1, "a")).is_ok());
        let (code, refusal) = r.register(registration(1, "b")).unwrap_err();
        assert_eq!(code, 409);
        assert!(!refusal.permanent);
        assert!(
            refusal.error.contains("two pods claim rank 1"),
            "{}",
            refusal.error
        );
        let (_, refusal) = r.register(registration(3, "c")).unwrap_err();
        assert!(refusal.permanent);
        assert!(
            refusal.error.contains("out of range for a group of 3"),
            "{}",
            refusal.error
        );
        let (_, refusal) = r.register(registration(0, "d")).unwrap_err();
        assert!(
            refusal.error.contains("rank 0 is the leader's"),
            "{}",
            refusal.error
        );
        let mut wrong = registration(2, "e");
        wrong.group_size = 4;
        let (_, refusal) = r.register(wrong).unwrap_err();
        assert!(
            refusal.error.contains("group of 4 nodes"),
            "{}",
            refusal.error
        );
        assert_eq!(r.present(), 2);
        assert_eq!(r.missing(), vec![2]);
    }

    #[tokio::test]
    async fn a_lost_rank_dies_and_frees_its_rank_for_a_new_run() {
        let r = rendezvous(3);
        let _sweep = r.spawn_sweep();
        let mut updates = r.watch();
        let first = updates.recv().await.unwrap();
        assert_eq!(first.view.unwrap().nodes.len(), 1);
        r.register(registration(1, "a")).unwrap();
        let joined = updates.recv().await.unwrap();
        assert!(matches!(&joined.changes[..], [MembershipChange::Joined(n)] if n.id == "rank-1"));
        // No heartbeat: lost after the timeout.
        let died = tokio::time::timeout(Duration::from_secs(2), updates.recv())
            .await
            .unwrap()
            .unwrap();
        match &died.changes[..] {
            [MembershipChange::Died { node, reason }] => {
                assert_eq!(node.id, "rank-1");
                assert!(reason.as_deref().unwrap_or("").contains("no heartbeat"));
            }
            other => panic!("{other:?}"),
        }
        // A heartbeat of the lost run is refused; a new run may register.
        let h = Heartbeat {
            rank: 1,
            instance: "a".into(),
            leader: r.shared.leader_run.clone(),
            generation: 0,
            process: ProcessState::Idle,
            report: None,
            startup: None,
            preflight: None,
        };
        assert_eq!(r.heartbeat(h).await.unwrap_err().0, 410);
        assert!(r.register(registration(1, "b")).is_ok());
    }

    #[tokio::test]
    async fn orders_reach_the_ranks_they_were_given_to_and_a_failed_rank_dies() {
        let r = rendezvous(2);
        let mut reg = registration(1, "a");
        reg.group_size = 2;
        let registered = r.register(reg).unwrap();
        let plan = LaunchPlan {
            argv: vec!["vllm".into(), "serve".into()],
            ranks: vec![orchestrator_domain::RankPlan {
                rank: 1,
                argv: vec!["vllm".into(), "serve".into(), "--headless".into()],
                env: vec![],
            }],
            ..LaunchPlan::default()
        };
        let beat = |generation, process| Heartbeat {
            rank: 1,
            instance: "a".into(),
            leader: registered.leader.clone(),
            generation,
            process,
            report: None,
            startup: None,
            preflight: None,
        };
        let nodes = r.start(&plan);
        assert!(nodes.iter().all(|n| n.alive));
        let order = r.heartbeat(beat(0, ProcessState::Idle)).await.unwrap();
        assert_eq!(order.generation, 1);
        assert!(
            matches!(&order.command, Command::Run { argv, .. } if argv.contains(&"--headless".to_string()))
        );
        // Its process exits: the rank's node is dead, with the reason.
        let exited = ProcessState::Exited(orchestrator_domain::ExitStatus {
            code: Some(1),
            signal: None,
        });
        r.heartbeat(beat(1, exited)).await.unwrap();
        let rank1 = r.nodes().into_iter().find(|n| n.id == "rank-1").unwrap();
        assert!(!rank1.alive);
        // A stop is confirmed by the next heartbeat.
        let stopping = {
            let r = r.clone();
            tokio::spawn(async move { r.stop(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let order = r.heartbeat(beat(1, ProcessState::Idle)).await.unwrap();
        assert_eq!(order.command, Command::Stop);
        r.heartbeat(beat(order.generation, ProcessState::Idle))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), stopping)
            .await
            .unwrap()
            .unwrap();
        // Starting again revives it.
        assert!(r.start(&plan).iter().all(|n| n.alive));
    }
}
