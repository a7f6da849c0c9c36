//! A rank other than the leader: register with the leader, keep a
//! heartbeat, and run, stop or wait as the leader's orders say. Its own
//! serving process's exit is reported at once; a leader that stops
//! answering for the heartbeat timeout, or restarted, means the group is
//! gone: the rank's process is stopped (a partial group cannot recover)
//! and it registers again. Entry point: [`run_member`].

use super::protocol::{
    Command, HEARTBEAT, Heartbeat, LEAVE, Leave, Order, ProcessState, REGISTER, Refusal,
    Registered, Registration,
};
use crate::endpoints::Status;
use crate::lifecycle::Exit;
use crate::probe::http;
use crate::serve::ServerProcess;
use crate::supervision::Shutdown;
use orchestrator_domain::{EventReason, ExitStatus, Phase, VerdictKind};
use std::time::{Duration, Instant};

/// What a rank's orchestrator needs.
#[derive(Debug, Clone)]
pub struct MemberPlan {
    /// Its rank.
    pub rank: u32,
    /// Ranks in the group.
    pub(crate) group_size: u32,
    /// The leader's endpoints, `HOST:PORT`.
    pub leader: String,
    /// This node's address.
    pub address: String,
    /// This node's host name.
    pub hostname: String,
    /// GPUs (or slots) it offers.
    pub gpus: f64,
    /// CPUs it offers.
    pub cpus: f64,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
    /// After how long without an answer the leader is gone.
    pub timeout: Duration,
    /// How long the leader may take to answer at all.
    pub(crate) leader_wait: Duration,
    /// Between SIGTERM and SIGKILL when the rank's process is stopped.
    pub stop_grace: Duration,
    /// This node's own checks (`[node-health]`), reported in every
    /// heartbeat; none when off.
    pub node_health: Option<crate::node_health::NodeHealthPlan>,
    /// The group secret's key: requests are signed with it and only
    /// answers signed with it are obeyed. None: an insecure group.
    pub key: Option<super::auth::GroupKey>,
    /// Stage deadlines and how this rank takes its own stacks when its
    /// server stalls.
    pub stall: crate::serve::StallSpec,
}

/// A POST to the leader: sealed with the group secret when there is one,
/// and the answer accepted only when the leader signed it for this
/// request (its body then stands in the answer).
async fn call(
    plan: &MemberPlan,
    path: &str,
    body: Option<String>,
    timeout: std::time::Duration,
) -> Result<crate::probe::HttpAnswer, String> {
    let Some(key) = &plan.key else {
        return http(&plan.leader, "POST", path, body, timeout)
            .await
            .map_err(|e| e.to_string());
    };
    let (wire, nonce) = key.seal(plan.rank, path, body.unwrap_or_default());
    let answer = http(&plan.leader, "POST", path, Some(wire), timeout)
        .await
        .map_err(|e| e.to_string())?;
    let body = key
        .open_answer(path, &nonce, answer.status, &answer.body)
        .map_err(|e| format!("the leader at {} did not authenticate: {e}", plan.leader))?;
    Ok(crate::probe::HttpAnswer {
        status: answer.status,
        body,
    })
}

/// Where a rank's reporter puts its node-health reports: kept for the next
/// heartbeat, which carries the newest to the leader.
#[derive(Debug)]
pub struct HeartbeatReports {
    node: orchestrator_domain::Node,
    latest: std::sync::Mutex<Option<orchestrator_domain::HealthReport>>,
}

impl HeartbeatReports {
    /// Reports about `node` (this rank's, as the leader names it).
    pub fn new(node: orchestrator_domain::Node) -> Self {
        Self {
            node,
            latest: std::sync::Mutex::new(None),
        }
    }

    /// The newest report.
    pub fn latest(&self) -> Option<orchestrator_domain::HealthReport> {
        match self.latest.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, report: Option<orchestrator_domain::HealthReport>) {
        match self.latest.lock() {
            Ok(mut g) => *g = report,
            Err(p) => *p.into_inner() = report,
        }
    }
}

impl crate::membership::HealthStore for HeartbeatReports {
    fn own_node<'a>(
        &'a self,
        _label: &'a str,
        _address: Option<&'a str>,
        _hostname: &'a str,
    ) -> crate::membership::StoreCall<'a, Option<orchestrator_domain::Node>> {
        Box::pin(async move { Ok(Some(self.node.clone())) })
    }
    fn publish<'a>(
        &'a self,
        report: &'a orchestrator_domain::HealthReport,
    ) -> crate::membership::StoreCall<'a, ()> {
        self.set(Some(report.clone()));
        Box::pin(async { Ok(()) })
    }
    fn withdraw<'a>(&'a self, _node_id: &'a str) -> crate::membership::StoreCall<'a, ()> {
        self.set(None);
        Box::pin(async { Ok(()) })
    }
    fn reports(&self) -> crate::membership::StoreCall<'_, Vec<orchestrator_domain::HealthReport>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// This rank's own checks while it runs: the reporter, where its reports
/// wait for the heartbeat, and how long it may stay unhealthy.
pub struct OwnChecks {
    /// The reporter (probes, policy).
    pub reporter: crate::node_health::Reporter,
    /// Its reports.
    pub reports: std::sync::Arc<HeartbeatReports>,
    /// How long the node may stay unhealthy before the rank exits.
    pub grace: Duration,
}

/// How a registration ended.
enum Registering {
    Done(Registered),
    Refused(String),
    Stopped,
}

/// The rank's serving process and what it last did.
struct Rank {
    process: Option<ServerProcess>,
    exited: Option<ExitStatus>,
    generation: u64,
    /// The current (or last) process's output: its stage, and its failure
    /// once it exited on its own.
    watch: Option<crate::serve::startup::OutputWatch>,
    failure: Option<orchestrator_domain::StartupFailure>,
    /// The server's program, and this start's own stall check.
    program: String,
    stacks: crate::serve::stall::OwnStacks,
    /// The last gang preflight's result (filled by its task).
    preflight: std::sync::Arc<std::sync::Mutex<Option<super::protocol::PreflightDone>>>,
}

impl Rank {
    fn state(&self) -> ProcessState {
        match (&self.process, &self.exited) {
            (Some(_), _) => ProcessState::Running,
            (None, Some(how)) => ProcessState::Exited(how.clone()),
            (None, None) => ProcessState::Idle,
        }
    }

    async fn stop(&mut self, grace: Duration, status: &Status) {
        if let Some(mut p) = self.process.take() {
            let how = p.stop(grace).await;
            tracing::info!(?how, "this rank's serving process stopped");
        }
        self.exited = None;
        self.failure = None;
        status.server_pid(None);
    }

    /// What the heartbeat says of the server's start.
    fn startup(&self) -> Option<super::protocol::RankStartup> {
        let watch = self.watch.as_ref()?;
        let own = watch
            .stages()
            .into_iter()
            .find(|s| s.rank == watch.own_rank())?;
        let root = self.root();
        Some(super::protocol::RankStartup {
            stage: own.stage,
            since_unix_ms: own.since_unix_ms,
            failure: self.failure.clone(),
            stopped: root.is_some_and(crate::serve::stall::is_stopped),
            stacks: self.stacks.latest(),
        })
    }

    /// This rank's heartbeat: its run, its last order, its process, its
    /// own checks' report, its start and its last preflight.
    fn heartbeat(
        &self,
        rank: u32,
        instance: &str,
        leader: &str,
        checks: Option<&OwnChecks>,
    ) -> Heartbeat {
        Heartbeat {
            rank,
            instance: instance.to_string(),
            leader: leader.to_string(),
            generation: self.generation,
            process: self.state(),
            report: checks.and_then(|c| c.reports.latest()),
            startup: self.startup(),
            preflight: match self.preflight.lock() {
                Ok(p) => p.clone(),
                Err(p) => p.into_inner().clone(),
            },
        }
    }

    /// The running server's pid.
    fn root(&self) -> Option<u32> {
        self.process
            .as_ref()
            .and_then(ServerProcess::pid)
            .and_then(|p| u32::try_from(p).ok())
    }

    /// Takes this rank's stacks when the leader asks for them.
    fn take_stacks(&mut self, wanted: Option<super::protocol::StacksWanted>) {
        let root = self.root();
        if let (Some(wanted), Some(watch), Some(_)) = (wanted, self.watch.as_ref(), root) {
            self.stacks.take(
                &self.program,
                watch,
                root,
                wanted.since_unix_ms,
                wanted.deadline_ms,
            );
        }
    }
}

/// Runs rank `plan.rank` until a stop is requested (exit 0) or the leader
/// refuses it or stays away (exit 1). Its process is always stopped
/// before this returns.
pub async fn run_member(
    plan: &MemberPlan,
    checks: Option<&OwnChecks>,
    status: &Status,
    shutdown: &Shutdown,
) -> Exit {
    let instance = super::rendezvous::run_id();
    let label = format!("rank {} of {}", plan.rank, plan.group_size);
    let mut rank = Rank {
        process: None,
        exited: None,
        generation: 0,
        watch: None,
        failure: None,
        program: String::new(),
        stacks: crate::serve::stall::OwnStacks::new(plan.stall.clone()),
        preflight: std::sync::Arc::default(),
    };
    status.enter(Phase::Wait);
    status.nodes(0, plan.group_size);
    loop {
        let registered = match register(plan, &instance, shutdown).await {
            Registering::Done(r) => r,
            Registering::Refused(message) => {
                status.fail(EventReason::ClusterNotReady, message.clone());
                return Exit::failed(1, message);
            }
            Registering::Stopped => return Exit::ok(),
        };
        tracing::info!(leader = %plan.leader, "{label}: registered with the leader");
        status.health(
            VerdictKind::Degraded,
            format!("{label}: registered, waiting for the leader's order"),
            false,
        );
        rank.generation = 0;
        let end = follow_orders(
            plan,
            &label,
            &instance,
            &registered,
            &mut rank,
            Around {
                checks,
                status,
                shutdown,
            },
        )
        .await;
        rank.stop(plan.stop_grace, status).await;
        match end {
            Followed::Unhealthy(reason) => {
                // The leader frees the rank now, not at the heartbeat
                // timeout: the pod that replaces this one takes it at once.
                leave(plan, &instance).await;
                let message = format!(
                    "{label}: this node stayed unhealthy for {} s (node-health.unhealthy-grace-seconds): {reason}; stopping so that the pod is replaced",
                    checks.map_or(0, |c| c.grace.as_secs())
                );
                status.fail(EventReason::NodeUnhealthy, message.clone());
                return Exit::failed(crate::node_health::UNHEALTHY_EXIT_CODE, message);
            }
            Followed::Stopped => {
                status.enter(Phase::Stopping);
                leave(plan, &instance).await;
                return Exit::ok();
            }
            Followed::LeaderGone(why) => {
                tracing::warn!("{label}: {why}; this rank stopped, registering again");
                status.event(EventReason::ServerRestarting, format!("{label}: {why}"));
                status.enter(Phase::Wait);
                status.health(VerdictKind::Degraded, format!("{label}: {why}"), false);
            }
        }
    }
}

/// Tells the leader this run of the rank is over (bounded: 2 s; a leader
/// that does not answer counts the rank lost at the heartbeat timeout).
async fn leave(plan: &MemberPlan, instance: &str) {
    let leave = Leave {
        rank: plan.rank,
        instance: instance.to_string(),
    };
    let body = serde_json::to_string(&leave).unwrap_or_default();
    if let Err(e) = call(plan, LEAVE, Some(body), Duration::from_secs(2)).await {
        tracing::warn!("could not tell the leader this rank leaves: {e}");
    }
}

/// Registers, retrying while the leader does not answer (up to the
/// leader wait) or holds the rank for a run it has not yet counted lost.
async fn register(plan: &MemberPlan, instance: &str, shutdown: &Shutdown) -> Registering {
    let registration = Registration {
        rank: plan.rank,
        group_size: plan.group_size,
        instance: instance.to_string(),
        address: plan.address.clone(),
        hostname: plan.hostname.clone(),
        gpus: plan.gpus,
        cpus: plan.cpus,
    };
    let body = serde_json::to_string(&registration).unwrap_or_default();
    let started = Instant::now();
    let mut last_error = String::new();
    loop {
        match call(plan, REGISTER, Some(body.clone()), Duration::from_secs(5)).await {
            Ok(answer) if answer.status == 200 => {
                match serde_json::from_str::<Registered>(&answer.body) {
                    Ok(r) => return Registering::Done(r),
                    Err(e) => last_error = format!("the leader's answer is not understood: {e}"),
                }
            }
            Ok(answer) => {
                let refusal: Option<Refusal> = serde_json::from_str(&answer.body).ok();
                match refusal.map(Refusal::for_log) {
                    Some(r) if r.permanent => {
                        return Registering::Refused(format!(
                            "the leader at {} refused rank {}: {}",
                            plan.leader, plan.rank, r.error
                        ));
                    }
                    Some(r) => {
                        if r.error != last_error {
                            tracing::warn!("the leader refused for now: {}", r.error);
                        }
                        last_error = r.error;
                    }
                    None => {
                        last_error = format!(
                            "the leader at {} answered HTTP {} (is it an orchestrator with backend = \"native\"?)",
                            plan.leader, answer.status
                        );
                    }
                }
            }
            Err(e) => last_error = e,
        }
        if started.elapsed() >= plan.leader_wait {
            return Registering::Refused(format!(
                "the leader at {} did not take rank {} within {} s (native.leader-wait-seconds): {last_error}",
                plan.leader,
                plan.rank,
                plan.leader_wait.as_secs()
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(plan.heartbeat) => {}
            () = shutdown.requested() => return Registering::Stopped,
        }
    }
}

enum Followed {
    Stopped,
    LeaderGone(String),
    Unhealthy(String),
}

/// The heartbeat loop: report, receive the order, carry it out.
/// What a rank's run works with besides its plan.
#[derive(Clone, Copy)]
struct Around<'a> {
    checks: Option<&'a OwnChecks>,
    status: &'a Status,
    shutdown: &'a Shutdown,
}

async fn follow_orders(
    plan: &MemberPlan,
    label: &str,
    instance: &str,
    registered: &Registered,
    rank: &mut Rank,
    around: Around<'_>,
) -> Followed {
    let Around {
        checks,
        status,
        shutdown,
    } = around;
    let mut last_answer = Instant::now();
    let mut own = checks.map(|c| c.reporter.subscribe());
    let grace = checks.map_or(Duration::MAX, |c| c.grace);
    let timeout = plan
        .timeout
        .max(Duration::from_millis(registered.timeout_ms));
    loop {
        let beat = rank.heartbeat(plan.rank, instance, &registered.leader, checks);
        let body = serde_json::to_string(&beat).unwrap_or_default();
        // The leader holds a heartbeat up to one interval.
        let request = call(
            plan,
            HEARTBEAT,
            Some(body),
            plan.heartbeat * 2 + Duration::from_secs(2),
        );
        let running = rank.process.is_some();
        let answer = tokio::select! {
            answer = request => answer,
            how = async {
                match rank.process.as_mut() {
                    Some(p) => p.wait().await,
                    None => std::future::pending().await,
                }
            }, if running => {
                tracing::warn!(code = ?how.code, signal = ?how.signal, "{label}: this rank's serving process exited");
                if let Some(p) = rank.process.take() {
                    let failure = p.watch().failure(how.clone());
                    tracing::error!("{label}: {}", failure.summary());
                    rank.failure = Some(failure);
                }
                rank.exited = Some(how);
                status.server_pid(None);
                status.health(VerdictKind::Restart, format!("{label}: serving process exited; the leader restarts the group"), false);
                continue;
            }
            () = shutdown.requested() => return Followed::Stopped,
            reason = async {
                match own.as_mut() {
                    Some(own) => crate::node_health::unhealthy_for(own, grace).await,
                    None => std::future::pending().await,
                }
            } => return Followed::Unhealthy(reason),
        };
        match answer {
            Ok(a) if a.status == 200 => match serde_json::from_str::<Order>(&a.body) {
                Ok(order) => {
                    last_answer = Instant::now();
                    rank.take_stacks(order.stacks_wanted);
                    carry_out(plan, label, order, rank, status).await;
                    continue;
                }
                Err(e) => tracing::warn!("{label}: the leader's order is not understood: {e}"),
            },
            Ok(a) if a.status == 410 => {
                let why = serde_json::from_str::<Refusal>(&a.body)
                    .map(|r| r.for_log().error)
                    .unwrap_or_else(|_| "the leader no longer knows this rank".into());
                return Followed::LeaderGone(why);
            }
            Ok(a) => tracing::warn!(
                "{label}: heartbeat answered HTTP {}: {}",
                a.status,
                super::protocol::peer_text(a.body.trim())
            ),
            Err(e) => tracing::debug!("{label}: heartbeat failed: {e}"),
        }
        if last_answer.elapsed() >= timeout {
            return Followed::LeaderGone(format!(
                "the leader at {} has not answered for {} ms",
                plan.leader,
                last_answer.elapsed().as_millis()
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(plan.heartbeat.min(Duration::from_millis(500))) => {}
            () = shutdown.requested() => return Followed::Stopped,
        }
    }
}

/// Carries out an order once (an order already carried out is a no-op).
async fn carry_out(plan: &MemberPlan, label: &str, order: Order, rank: &mut Rank, status: &Status) {
    if order.generation == rank.generation {
        return;
    }
    match order.command {
        Command::Wait => {}
        Command::Preflight(check) => {
            rank.stop(plan.stop_grace, status).await;
            tracing::info!("{label}: running its part of the gang preflight");
            run_preflight(plan, check, order.generation, &rank.preflight);
        }
        Command::Stop => {
            rank.stop(plan.stop_grace, status).await;
            status.health(
                VerdictKind::Degraded,
                format!("{label}: stopped by the leader, waiting for its order"),
                false,
            );
        }
        Command::Run {
            argv,
            env,
            from_own_env,
        } => {
            rank.stop(plan.stop_grace, status).await;
            // The server inherits this pod's environment: the plan's
            // secrets come from there, not from the network.
            for name in from_own_env.iter().take(64) {
                if std::env::var_os(name).is_none() {
                    tracing::warn!(
                        "{label}: the launch plan uses the secret {:?}, which the leader does not send and this pod's environment lacks: give every pod the same Secret",
                        name.chars().take(128).collect::<String>()
                    );
                }
            }
            let env: Vec<(String, String)> = env.into_iter().map(|kv| (kv.key, kv.value)).collect();
            let watch =
                crate::serve::startup::OutputWatch::new(plan.rank, &plan.address, &argv, &env);
            rank.watch = Some(watch.clone());
            rank.failure = None;
            rank.program = argv.first().cloned().unwrap_or_default();
            rank.stacks = crate::serve::stall::OwnStacks::new(plan.stall.clone());
            match ServerProcess::spawn("vllm", &argv, &env, watch) {
                Ok(p) => {
                    status.server_pid(p.pid());
                    status.enter(Phase::Serve);
                    status.health(
                        VerdictKind::Healthy,
                        format!("{label}: this rank's serving process runs"),
                        true,
                    );
                    rank.process = Some(p);
                }
                Err(e) => {
                    tracing::error!("{label}: {e}");
                    let mut failure = rank
                        .watch
                        .as_ref()
                        .map(|w| w.failure(ExitStatus::default()));
                    if let Some(f) = failure.as_mut() {
                        f.exception = Some(e.to_string());
                    }
                    rank.failure = failure;
                    rank.exited = Some(ExitStatus::default());
                }
            }
        }
    }
    rank.generation = order.generation;
}

/// This rank's part of the gang preflight, in a task of its own: the
/// result lands in `slot` for the heartbeat.
fn run_preflight(
    plan: &MemberPlan,
    check: super::protocol::PreflightOrder,
    generation: u64,
    slot: &std::sync::Arc<std::sync::Mutex<Option<super::protocol::PreflightDone>>>,
) {
    let spec = crate::preflight::PreflightSpec {
        mode: crate::config::PreflightMode::Warn,
        backend: check.backend,
        bytes: check.bytes,
        timeout: Duration::from_secs(check.timeout_seconds.clamp(1, 3600)),
        max_p2p_ms: f64::MAX,
        max_allreduce_ms: f64::MAX,
        check_gpus: check.check_gpus,
        python: Some(check.python.clone().into()),
    };
    let (me, world, gpus) = (plan.rank, check.world, plan.gpus as u32);
    let slot = std::sync::Arc::clone(slot);
    tokio::spawn(async move {
        let env: Vec<(String, String)> = check
            .env
            .iter()
            .take(64)
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let python = std::path::PathBuf::from(&check.python);
        let result = crate::preflight::check_rank(
            &spec,
            &python,
            me,
            world,
            &check.master,
            Some(gpus),
            &env,
        )
        .await;
        if let Some(e) = &result.error {
            tracing::warn!("rank {me}'s gang preflight: {e}");
        }
        let done = super::protocol::PreflightDone {
            generation,
            check: result,
        };
        match slot.lock() {
            Ok(mut g) => *g = Some(done),
            Err(p) => *p.into_inner() = Some(done),
        }
    });
}
