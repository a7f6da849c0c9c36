//! The health loop: the serving process supervised, probed and judged.
//!
//! Every event (a probe result, the server's exit, a node's death or join
//! pushed by the membership source, the health interval) updates the
//! [`HealthLoop`] through one method per event, and each that may change
//! the picture builds a health snapshot and asks the health policy.
//! Probes run as their own tasks, so a slow generation probe never delays
//! the reaction to a dead node or an exited server. Entry point:
//! [`supervise`].

use super::probe;
use super::server::ServerProcess;
use super::stall::StallWatch;
use super::{ServeContext, ServeOutcome, ServeSpec};
use orchestrator_domain::{
    ClusterView, ExitStatus, HealthSnapshot, HealthVerdict, LaunchPlan, MembershipChange,
    MembershipUpdate, Node, NodeChange, NodeChangeKind, ProbeResult, RankStage, RestartAction,
    ServerStage, ServerState, ShutdownAction, Stall, StartupStep, VerdictKind,
};
use orchestrator_policy_host::{HealthPolicy, World};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The most a server that never answered `/health` gets between SIGTERM
/// and SIGKILL.
const STARTING_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum ProbeKind {
    Health,
    Generation,
}

/// The probes of the current server.
#[derive(Default)]
struct Probes {
    health: Option<(ProbeResult, Instant)>,
    generation: Option<(ProbeResult, Instant)>,
    health_failures: u32,
    generation_failures: u32,
    health_in_flight: bool,
    generation_in_flight: bool,
    last_generation: Option<Instant>,
}

impl Probes {
    fn aged(slot: &Option<(ProbeResult, Instant)>) -> Option<ProbeResult> {
        slot.as_ref().map(|(p, at)| ProbeResult {
            age_ms: at.elapsed().as_millis() as u64,
            ..p.clone()
        })
    }
}

/// The current server: the process (none if it could not be spawned),
/// how it ended, whether it ever answered.
struct Server {
    process: Option<ServerProcess>,
    launched: Instant,
    exited: Option<ExitStatus>,
    running: bool,
    /// The warm-up completions (the first generation probes) succeeded.
    warmed: bool,
    /// Warm-up completions that succeeded so far.
    warm_ups: usize,
    probes: Probes,
}

/// What the loop does after a verdict.
enum Next {
    Continue,
    Relaunch,
    End(ServeOutcome),
}

/// The nodes a new server runs on: alive, and not judged unhealthy by
/// their own checks.
fn ids_usable(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.alive && n.health.usable())
        .map(|n| n.id.clone())
        .collect()
}

/// The state of the serve phase between events.
struct HealthLoop<'a> {
    spec: &'a ServeSpec,
    plan: &'a LaunchPlan,
    env: Vec<(String, String)>,
    ctx: ServeContext<'a>,
    policy: &'a mut HealthPolicy,
    ready_at: Option<Instant>,
    phase_start: Instant,
    nodes: Vec<Node>,
    server_nodes: Vec<String>,
    changes: Vec<NodeChange>,
    restarts: u32,
    server: Server,
    probe_tx: mpsc::UnboundedSender<(ProbeKind, ProbeResult)>,
    last_logged: Option<(VerdictKind, Instant)>,
    board: std::sync::Arc<crate::node_health::Board>,
    /// A server started early (before the cluster was ready) for the
    /// same plan: the first launch takes it over instead of spawning.
    prelaunched: Option<ServerProcess>,
    /// Every rank's stage in the current start, as last synced.
    stages: Vec<RankStage>,
    /// Finds the current start's stall (kept, once diagnosed, in
    /// `/status`).
    stall_watch: StallWatch,
}

impl<'a> HealthLoop<'a> {
    /// The loop before its first launch.
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: &'a ServeSpec,
        plan: &'a LaunchPlan,
        nodes: &[Node],
        ready_at: Option<Instant>,
        policy: &'a mut HealthPolicy,
        ctx: ServeContext<'a>,
        prelaunched: Option<ServerProcess>,
        probe_tx: mpsc::UnboundedSender<(ProbeKind, ProbeResult)>,
        stall_watch: StallWatch,
    ) -> Self {
        Self {
            spec,
            plan,
            env: plan
                .env
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            ctx,
            policy,
            ready_at,
            phase_start: Instant::now(),
            nodes: nodes.to_vec(),
            server_nodes: Vec::new(),
            changes: Vec::new(),
            restarts: 0,
            server: Server {
                process: None,
                launched: Instant::now(),
                exited: None,
                running: false,
                warmed: false,
                warm_ups: 0,
                probes: Probes::default(),
            },
            probe_tx,
            last_logged: None,
            board: ctx.health.map(|rx| rx.borrow().clone()).unwrap_or_default(),
            prelaunched,
            stages: Vec::new(),
            stall_watch,
        }
    }

    /// Starts the serving process (again, after a restart).
    fn launch(&mut self) {
        let exec_called = self.ready_at.map(|t| t.elapsed().as_micros() as u64);
        let spawned = match self.prelaunched.take() {
            Some(early) => {
                tracing::info!("the early-launched serving process goes on");
                Ok(early)
            }
            None => {
                // Every other rank starts now, with this one.
                if let Some(group) = self.ctx.group {
                    self.nodes = group.start(self.plan);
                    self.board.annotate(&mut self.nodes);
                }
                let watch = super::startup::OutputWatch::new(
                    0,
                    self.spec.probe_host(),
                    &self.plan.argv,
                    &self.env,
                );
                ServerProcess::spawn("vllm", &self.plan.argv, &self.env, watch)
            }
        };
        let process = match spawned {
            Ok(s) => {
                if let (Some(ready_at), 0) = (self.ready_at, self.restarts) {
                    tracing::info!(
                        after_us = ready_at.elapsed().as_micros() as u64,
                        exec_called_after_us = exec_called.unwrap_or(0),
                        "serving process started after the ready decision"
                    );
                }
                Some(s)
            }
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        };
        let pid = process.as_ref().and_then(ServerProcess::pid);
        self.ctx.status.server_pid(pid);
        if let Some(pid) = pid {
            self.ctx
                .status
                .mark(StartupStep::ServerProcessUp, format!("pid {pid}"));
        }
        let exited = process.is_none().then(ExitStatus::default);
        self.server = Server {
            process,
            launched: Instant::now(),
            exited,
            running: false,
            warmed: false,
            warm_ups: 0,
            probes: Probes::default(),
        };
        self.server_nodes = ids_usable(&self.nodes);
        self.stall_watch.restart(self.restarts);
        self.ctx.status.start_again();
        self.sync_stages();
        if let Some(how) = self.server.exited.clone() {
            self.startup_failed(how);
        }
    }

    /// Every rank's stage to `/status`: this process's server's, and the
    /// other ranks' of a group as they report them (a rank that has
    /// loaded its weights is as far as the group's engine beyond that).
    fn sync_stages(&mut self) {
        let mut stages = self
            .server
            .process
            .as_ref()
            .map(|p| p.watch().stages())
            .unwrap_or_default();
        if let Some(group) = self.ctx.group {
            let engine = stages
                .iter()
                .find(|s| s.rank == 0)
                .map(|s| s.stage)
                .filter(|s| *s > ServerStage::WeightsLoaded);
            for mut rank in group.stages() {
                if let Some(engine) = engine
                    && rank.stage >= ServerStage::WeightsLoaded
                {
                    rank.stage = rank.stage.max(engine);
                }
                stages.retain(|s| s.rank != rank.rank);
                stages.push(rank);
            }
            stages.sort_by_key(|s| s.rank);
        }
        self.stages.clone_from(&stages);
        self.ctx.status.stages(stages);
    }

    /// Looks for a stall of the current start (one that has not served
    /// yet).
    fn check_stall(&mut self) {
        let Some(process) = self.server.process.as_ref() else {
            return;
        };
        if self.server.exited.is_some() || self.server.warmed {
            return;
        }
        let reach = super::stall::Reach {
            program: self.plan.argv.first().cloned().unwrap_or_default(),
            own_rank: process.watch().own_rank(),
            root: process.pid().and_then(|p| u32::try_from(p).ok()),
            workers: process.watch().workers(),
            secrets: process.watch().secrets(),
            reported: self.ctx.group.map(|g| g.diagnoses()),
        };
        if let (Some((rank, since, deadline)), Some(group)) =
            (self.stall_watch.check(&self.stages, &reach), self.ctx.group)
        {
            group.want_stacks(rank, since, deadline);
        }
    }

    /// A stall diagnosed (for start `start`): kept for `/status` and the
    /// health policy while that start goes on.
    fn on_stall(&mut self, start: u32, stall: Stall) -> bool {
        if !self.stall_watch.current(start) || self.server.exited.is_some() {
            return false;
        }
        self.ctx.status.stalled(stall);
        true
    }

    /// The server ended (or never started) before it served: the failure
    /// with its cause goes to `/status`, the log and an Event.
    fn startup_failed(&mut self, how: ExitStatus) {
        let failure = match self.server.process.as_ref() {
            Some(p) => p.watch().failure(how),
            None => orchestrator_domain::StartupFailure {
                rank: 0,
                node: self.spec.probe_host().to_string(),
                stage: ServerStage::ProcessUp,
                exit: how,
                exception: None,
                last_lines: vec![],
                at_unix_ms: orchestrator_domain::startup::now_unix_ms(),
                identical: 1,
            },
        };
        self.ctx.status.startup_failed(failure);
    }

    /// With `/readyz` already false (a stop request, or a restart): lets the
    /// requests in flight finish (vLLM's running and waiting counts at 0)
    /// for up to the drain timeout. Ends at once when there is nothing to
    /// wait for: no drain configured, no server, a server that is not
    /// vLLM (no such counts), its exit, or a second signal.
    async fn drain(&mut self) {
        let limit = self.spec.drain_timeout;
        if limit.is_zero() || self.server.exited.is_some() {
            return;
        }
        let Some(process) = self.server.process.as_mut() else {
            return;
        };
        let address = self.spec.probe_address.clone();
        let started = Instant::now();
        let mut announced = false;
        loop {
            let in_flight = probe::requests_in_flight(&address, Duration::from_secs(2)).await;
            match in_flight {
                Ok(0) => {
                    if announced {
                        tracing::info!(
                            seconds = started.elapsed().as_secs_f64(),
                            "drained: every request in flight finished"
                        );
                    }
                    return;
                }
                Ok(n) if started.elapsed() >= limit => {
                    tracing::warn!(
                        in_flight = n,
                        "the drain timeout ({} s) passed with requests in flight; stopping the server",
                        limit.as_secs()
                    );
                    return;
                }
                Ok(n) => {
                    if !announced {
                        tracing::info!(
                            in_flight = n,
                            "draining: /readyz is false, waiting up to {} s for the requests in flight",
                            limit.as_secs()
                        );
                        announced = true;
                    }
                }
                Err(e) => {
                    tracing::info!("not draining: cannot count the requests in flight ({e})");
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                how = process.wait() => {
                    tracing::warn!(code = ?how.code, signal = ?how.signal, "the server exited while draining");
                    self.server.exited = Some(how);
                    return;
                }
                () = self.ctx.shutdown.forced() => {
                    tracing::warn!("a second stop request: not draining any longer");
                    return;
                }
            }
        }
    }

    /// Stops the current server: SIGTERM, then SIGKILL after the grace, or
    /// at once when a second stop request forces it.
    async fn stop_server(&mut self) {
        // A server that never served has nothing to drain, and vLLM still
        // starting can sit out a SIGTERM: it gets a short grace.
        let grace = if self.server.running {
            self.spec.stop_grace
        } else {
            self.spec.stop_grace.min(STARTING_STOP_GRACE)
        };
        let (group, shutdown) = (self.ctx.group, self.ctx.shutdown);
        let process = self.server.process.as_mut();
        let local = async {
            if let Some(s) = process {
                tokio::select! {
                    how = s.stop(grace) => tracing::info!(?how, "serving process stopped"),
                    () = shutdown.forced() => {
                        s.kill_now();
                        tracing::warn!("serving process killed");
                    }
                }
            }
        };
        // The other ranks stop with this one.
        let others = async {
            if let Some(group) = group {
                group.stop(grace).await;
            }
        };
        tokio::join!(local, others);
        self.ctx.status.server_pid(None);
    }

    fn on_server_exit(&mut self, how: ExitStatus) {
        tracing::warn!(code = ?how.code, signal = ?how.signal, "serving process exited");
        self.server.exited = Some(how.clone());
        self.ctx.status.server_pid(None);
        self.sync_stages();
        if !self.server.running {
            self.startup_failed(how);
        }
    }

    /// A membership update: every join and death is news for the policy.
    fn on_membership(&mut self, update: MembershipUpdate) -> bool {
        let news = !update.changes.is_empty();
        for change in &update.changes {
            let (kind, node) = match change {
                MembershipChange::Joined(n) => (NodeChangeKind::Joined, n),
                MembershipChange::Died { node, .. } => (NodeChangeKind::Died, node),
            };
            if kind == NodeChangeKind::Died {
                tracing::warn!(node = %node.short_id(), address = %node.address, "node died during serving");
            }
            if kind == NodeChangeKind::Died
                && let Some(group) = self.ctx.group
            {
                for failure in group.take_failures() {
                    self.ctx.status.startup_failed(failure);
                }
            }
            self.changes.push(NodeChange {
                node_id: node.id.clone(),
                kind,
            });
        }
        // A whole view with no node is a watcher that never connected:
        // keep what is known.
        if update.view.as_ref().is_none_or(|v| !v.nodes.is_empty()) {
            let mut view = ClusterView {
                nodes: std::mem::take(&mut self.nodes),
            };
            update.apply_into(&mut view);
            self.nodes = view.nodes;
            self.board.annotate(&mut self.nodes);
            let alive = self.nodes.iter().filter(|n| n.alive).count() as u32;
            let expected = self.ctx.status.snapshot().nodes_expected;
            self.ctx.status.nodes(alive, expected);
        }
        news
    }

    /// New node-health reports: news when a node's health changed.
    fn on_node_health(&mut self, board: std::sync::Arc<crate::node_health::Board>) -> bool {
        self.board = board;
        let before: Vec<_> = self.nodes.iter().map(|n| n.health.clone()).collect();
        self.board.annotate(&mut self.nodes);
        self.nodes.iter().zip(before).any(|(n, b)| n.health != b)
    }

    fn on_probe(&mut self, kind: ProbeKind, result: ProbeResult) {
        let mut warm_up = false;
        let probes = &mut self.server.probes;
        match kind {
            ProbeKind::Health => {
                probes.health_in_flight = false;
                if let Some(code) = result.status_code {
                    self.ctx
                        .status
                        .mark(StartupStep::ApiAnswering, format!("HTTP {code}"));
                }
                if result.ok {
                    self.ctx
                        .status
                        .mark(StartupStep::FirstHealthOk, "/health 200");
                    probes.health_failures = 0;
                    if !self.server.running {
                        self.server.running = true;
                        self.ctx.status.start_served();
                        tracing::info!(
                            after_ms = self.server.launched.elapsed().as_millis() as u64,
                            "serving process answers /health"
                        );
                        warm_up = true;
                    }
                } else if self.server.running {
                    probes.health_failures += 1;
                }
                probes.health = Some((result, Instant::now()));
            }
            ProbeKind::Generation => {
                probes.generation_in_flight = false;
                if result.ok
                    && self.ctx.status.mark(
                        StartupStep::FirstCompletion,
                        format!("one-token completion in {} ms", result.latency_ms),
                    )
                {
                    tracing::info!(
                        "serving; startup timeline:\n{}",
                        self.ctx.status.timeline_table()
                    );
                }
                if result.ok {
                    probes.generation_failures = 0;
                    if !self.server.warmed {
                        self.server.warm_ups += 1;
                        // The next warm-up goes out at once.
                        warm_up = true;
                    }
                    if !self.server.warmed && self.server.warm_ups >= probe::WARM_UP_PROMPTS.len() {
                        self.server.warmed = true;
                        if let Some(p) = self.server.process.as_ref() {
                            p.watch().reach_all(ServerStage::WarmedUp);
                        }
                        tracing::info!(
                            latency_ms = result.latency_ms,
                            "warm-up completion succeeded{}",
                            if self.spec.ready_after_warmup {
                                ": ready for traffic"
                            } else {
                                ""
                            }
                        );
                    }
                } else {
                    probes.generation_failures += 1;
                    tracing::warn!(
                        error = result.error.as_deref().unwrap_or(""),
                        "generation probe failed"
                    );
                }
                probes.generation = Some((result, Instant::now()));
            }
        }
        if warm_up {
            // The warm-up completion goes out at once.
            self.on_tick();
        }
        if self.server.warmed {
            self.sync_stages();
        }
    }

    /// The health interval: start the probes that are due.
    fn on_tick(&mut self) {
        self.sync_stages();
        self.check_stall();
        let alive = self.server.exited.is_none();
        let probes = &mut self.server.probes;
        if alive && !probes.health_in_flight {
            probes.health_in_flight = true;
            let (tx, address, timeout) = (
                self.probe_tx.clone(),
                self.spec.probe_address.clone(),
                self.spec.health_timeout,
            );
            tokio::spawn(async move {
                let _ = tx.send((ProbeKind::Health, probe::health(&address, timeout).await));
            });
        }
        // Warm-ups go out one after the other; then at the interval.
        let due = !self.server.warmed
            || probes
                .last_generation
                .is_none_or(|t| t.elapsed() >= self.spec.generation_interval);
        if alive && self.server.running && due && !probes.generation_in_flight {
            probes.generation_in_flight = true;
            probes.last_generation = Some(Instant::now());
            // The warm-up generates several tokens, so that the decode
            // path (not only the prompt's) has run once before ready.
            let (prompt, tokens) = match probe::WARM_UP_PROMPTS.get(self.server.warm_ups) {
                Some(prompt) if !self.server.warmed => (*prompt, probe::WARM_UP_TOKENS),
                _ => ("ping", 1),
            };
            let (tx, address, model, timeout) = (
                self.probe_tx.clone(),
                self.spec.probe_address.clone(),
                self.spec.served_name().to_string(),
                self.spec.generation_timeout,
            );
            tokio::spawn(async move {
                let result = probe::generation(&address, &model, prompt, tokens, timeout).await;
                let _ = tx.send((ProbeKind::Generation, result));
            });
        }
    }

    fn snapshot(&mut self) -> HealthSnapshot {
        let (stall, last_failure) = self.ctx.status.start_view();
        let s = &self.server;
        HealthSnapshot {
            server: match (&s.exited, s.running) {
                (Some(how), _) => ServerState::Exited(how.clone()),
                (None, true) => ServerState::Running,
                (None, false) => ServerState::Starting,
            },
            server_uptime_ms: s.launched.elapsed().as_millis() as u64,
            health_probe: Probes::aged(&s.probes.health),
            generation_probe: Probes::aged(&s.probes.generation),
            consecutive_probe_failures: s.probes.health_failures.max(s.probes.generation_failures),
            nodes: self.nodes.clone(),
            server_nodes: self.server_nodes.clone(),
            changes: std::mem::take(&mut self.changes),
            restarts: self.restarts,
            uptime_ms: self.phase_start.elapsed().as_millis() as u64,
            stages: self.stages.clone(),
            stall,
            last_failure,
        }
    }

    /// Asks the health policy and carries out its verdict.
    async fn evaluate(&mut self) -> Next {
        let snapshot = self.snapshot();
        let asked = Instant::now();
        let verdict = self.policy.evaluate(&snapshot, &self.spec.health_params);
        let status = self.ctx.status;
        status.policy_call(World::Health, asked.elapsed().as_secs_f64());
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                // A broken health policy must not take a serving model
                // down: report it and keep serving.
                tracing::error!("health policy failed: {e}");
                status.health(
                    VerdictKind::PolicyFailed,
                    format!("health policy failed: {e}"),
                    false,
                );
                return Next::Continue;
            }
        };
        let kind = verdict.kind();
        match verdict {
            HealthVerdict::Healthy => {
                let serving = self.server.exited.is_none()
                    && self.server.running
                    && (self.server.warmed || !self.spec.ready_after_warmup);
                status.health(kind, "healthy".into(), serving);
                Next::Continue
            }
            HealthVerdict::Degraded(reason) => {
                // Log a change of verdict at once, a lasting one every 30 s.
                let due = self
                    .last_logged
                    .is_none_or(|(k, at)| k != kind || at.elapsed() >= Duration::from_secs(30));
                if due {
                    tracing::info!("degraded: {reason}");
                    self.last_logged = Some((kind, Instant::now()));
                }
                status.health(kind, reason, false);
                Next::Continue
            }
            HealthVerdict::Restart(action) => self.restart(action).await,
            HealthVerdict::Shutdown(action) => Next::End(self.shut_down(action).await),
        }
    }

    async fn restart(&mut self, action: RestartAction) -> Next {
        tracing::warn!(
            backoff_ms = action.backoff_ms,
            "restarting the serving process: {}",
            action.reason
        );
        let status = self.ctx.status;
        status.health(
            VerdictKind::Restart,
            format!("restart: {}", action.reason),
            false,
        );
        status.restarted();
        // /readyz is false from the verdict on: the requests in flight
        // finish before the server stops (a server that exited has none).
        self.drain().await;
        self.stop_server().await;
        if self.ctx.shutdown.is_requested() {
            return Next::End(ServeOutcome::Stopped);
        }
        self.restarts += 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(u64::from(action.backoff_ms))) => Next::Relaunch,
            () = self.ctx.shutdown.requested() => Next::End(ServeOutcome::Stopped),
        }
    }

    async fn shut_down(&mut self, action: ShutdownAction) -> ServeOutcome {
        tracing::error!(
            exit_code = action.exit_code,
            "shutting down: {}",
            action.reason
        );
        self.ctx.status.health(
            VerdictKind::Shutdown,
            format!("shutdown: {}", action.reason),
            false,
        );
        self.stop_server().await;
        ServeOutcome::Shutdown {
            exit_code: action.exit_code,
            reason: action.reason,
        }
    }
}

/// Runs `plan` as the serving process and supervises it until a stop is
/// requested or the health policy says shut down. `nodes` are the nodes
/// alive when the cluster became ready (the server's); `ready_at`, when
/// the readiness policy said so (to log how soon after it the server was
/// started). The server is always stopped before this returns.
pub async fn supervise(
    spec: &ServeSpec,
    plan: &LaunchPlan,
    nodes: &[Node],
    ready_at: Option<Instant>,
    policy: &mut HealthPolicy,
    ctx: ServeContext<'_>,
) -> ServeOutcome {
    supervise_prelaunched(spec, plan, nodes, ready_at, policy, ctx, None).await
}

/// [`supervise`], taking over `prelaunched` (a server already started
/// for `plan` while the cluster formed) instead of starting one.
pub async fn supervise_prelaunched(
    spec: &ServeSpec,
    plan: &LaunchPlan,
    nodes: &[Node],
    ready_at: Option<Instant>,
    policy: &mut HealthPolicy,
    ctx: ServeContext<'_>,
    prelaunched: Option<ServerProcess>,
) -> ServeOutcome {
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let (stall_watch, mut stall_rx) = StallWatch::new(spec.stall.clone());
    let mut membership = ctx.source.watch();
    let mut tick = tokio::time::interval(spec.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = HealthLoop::new(
        spec,
        plan,
        nodes,
        ready_at,
        policy,
        ctx,
        prelaunched,
        probe_tx,
        stall_watch,
    );
    state.board.annotate(&mut state.nodes);
    let mut health_rx = ctx.health.cloned();
    state.launch();
    loop {
        let evaluate = tokio::select! {
            () = ctx.shutdown.requested() => {
                ctx.status.unready();
                state.drain().await;
                state.stop_server().await;
                return ServeOutcome::Stopped;
            }
            how = async {
                match state.server.process.as_mut() {
                    Some(s) => s.wait().await,
                    None => std::future::pending().await,
                }
            }, if state.server.exited.is_none() => {
                state.on_server_exit(how);
                true
            }
            Some(update) = membership.recv() => state.on_membership(update),
            open = async {
                match health_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => match (open, health_rx.as_mut()) {
                (true, Some(rx)) => {
                    let board = rx.borrow_and_update().clone();
                    state.on_node_health(board)
                }
                _ => {
                    health_rx = None;
                    false
                }
            },
            Some((kind, result)) = probe_rx.recv() => {
                state.on_probe(kind, result);
                true
            }
            Some((start, stall)) = stall_rx.recv() => state.on_stall(start, stall),
            _ = tick.tick() => {
                state.on_tick();
                true
            }
        };
        if !evaluate {
            continue;
        }
        match state.evaluate().await {
            Next::Continue => {}
            Next::Relaunch => {
                // A partial group cannot serve: every rank must be back.
                if let Some(group) = ctx.group {
                    ctx.status.health(
                        VerdictKind::Restart,
                        "waiting for every rank to be present before starting the group again"
                            .into(),
                        false,
                    );
                    tokio::select! {
                        () = group.assembled() => {}
                        () = ctx.shutdown.requested() => return ServeOutcome::Stopped,
                    }
                }
                // Results of the previous server's probes are dropped.
                while probe_rx.try_recv().is_ok() {}
                state.launch();
            }
            Next::End(outcome) => return outcome,
        }
    }
}
