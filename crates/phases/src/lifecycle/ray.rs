//! The Ray backend: `ray start` for this pod's node(s) (supervised), the
//! membership from Ray's GCS, on the head the wait, the early launch and
//! one serving process, and every Ray process stopped at the end. Entry
//! point: [`RayBackend`].

use super::early::{EarlyLaunch, EarlyServer};
use super::{
    AfterReady, Around, Backend, Exit, PhasesFuture, Plan, ReadyHook, Surroundings, WaitPlan,
    served, settle,
};
use crate::endpoints::Status;
use crate::node_health::{self as node_health, Board, OwnHealth, Reporter, UNHEALTHY_EXIT_CODE};
use crate::platform::kubernetes::{KubeHandle, Owner};
use crate::policies::Policies;
use crate::serve::{self, ServeContext};
use crate::start::{RayNodeError, RayNodes};
use crate::supervision::Shutdown;
use crate::wait::{Ready, WaitSpec, wait_for_cluster};
use orchestrator_domain::{EventReason, Phase, StartupStep, VerdictKind};
use orchestrator_node_probe::GpuProbe;
use orchestrator_policy_host::NodeHealthPolicy;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The Ray backend's run of a [`Plan`].
pub struct RayBackend {
    plan: Plan,
    policies: Option<Policies>,
    node_health_policy: Option<NodeHealthPolicy>,
    reporter: Option<Reporter>,
    board: Option<watch::Receiver<Arc<Board>>>,
    status: Arc<Status>,
    on_ready: Option<ReadyHook>,
    /// Capacity was asked of Ray's autoscaler (withdrawn at stop).
    capacity_asked: bool,
}

/// What the wait phase ended with.
enum Waited {
    /// Ready, with the server started early, if one was.
    Ready(Box<Ready>, Option<Box<EarlyServer>>),
    Ended(Exit),
}

impl RayBackend {
    /// A run of `plan`; the head's `policies` are loaded by the caller.
    pub fn new(plan: Plan, policies: Option<Policies>) -> Self {
        Self {
            plan,
            policies,
            node_health_policy: None,
            reporter: None,
            board: None,
            capacity_asked: false,
            status: Status::new(),
            on_ready: None,
        }
    }
}

impl Backend for RayBackend {
    fn surroundings(&self) -> Surroundings {
        let kubernetes = self.plan.kubernetes.as_ref().map(|(settings, cluster)| {
            let layout_gpus = self.plan.serve.as_ref().and_then(|s| {
                let tp = s.settings.tensor_parallel_size?;
                let pp = s.settings.pipeline_parallel_size.unwrap_or(1);
                Some(f64::from(tp) * f64::from(pp))
            });
            (
                settings.clone(),
                Owner::RayCluster {
                    cluster: cluster.clone(),
                    layout_gpus,
                },
            )
        });
        Surroundings {
            endpoints: self.plan.endpoints,
            open_file_limit: self.plan.open_file_limit,
            prefetch: self.plan.prefetch.clone(),
            weights: self.plan.weights.clone(),
            compile_cache: self.plan.compile_cache.clone(),
            kubernetes,
        }
    }

    fn phases<'a>(&'a mut self, around: Around<'a>) -> PhasesFuture<'a> {
        self.status = Arc::clone(around.status);
        self.node_health_policy = around.node_health;
        self.on_ready = around.on_ready;
        Box::pin(self.start_to_stop(around.shutdown, around.kubernetes))
    }
}

impl RayBackend {
    async fn start_to_stop(
        &mut self,
        shutdown: &Shutdown,
        kubernetes: &mut Option<KubeHandle>,
    ) -> Exit {
        let status = Arc::clone(&self.status);
        if let Some(join) = &self.plan.join {
            let cluster = join.cluster.describe();
            tracing::info!("waiting for {cluster}");
            status.enter(Phase::Wait);
            tokio::select! {
                r = join.cluster.reachable(join.timeout) => {
                    if let Err(e) = r {
                        return Exit::failed(1, e.to_string());
                    }
                }
                () = shutdown.requested() => return Exit::ok(),
            }
            tracing::info!("{cluster} answers");
        }
        let argv = self
            .plan
            .start
            .nodes
            .first()
            .map(|n| crate::start::ray_start::redact(&n.argv).join(" "))
            .unwrap_or_default();
        status.event(
            EventReason::StartingRay,
            format!("starting Ray ({}): {argv}", self.plan.role),
        );
        // A signal during `ray start` stops its process group (a hung
        // `ray start` ignores SIGTERM) and ends the run cleanly.
        let mut nodes = match RayNodes::start(&self.plan.start, Some(shutdown)).await {
            Ok(nodes) => nodes,
            Err(RayNodeError::Stopped) => {
                tracing::info!("stopped during `ray start`; nothing of Ray is left");
                return Exit::ok();
            }
            Err(e) => return Exit::failed(1, e.to_string()),
        };
        if let Some(first) = nodes.running().first() {
            status.mark(StartupStep::RayUp, first.label());
        }
        self.start_node_health(&nodes);
        let exit = if shutdown.is_requested() {
            Exit::ok()
        } else {
            self.after_start(&mut nodes, shutdown, kubernetes).await
        };
        settle(&status, &exit);
        self.board = None;
        // A worker withdraws its health reports only once its node has left
        // the GCS: withdrawn earlier, a node still alive there (an unhealthy
        // worker on its way out) would count as unknown, hence usable, and
        // could make the head's readiness decision. The head's GCS stops
        // with it, so the head withdraws first.
        // The capacity asked of the autoscaler is withdrawn while the GCS
        // still answers.
        if self.capacity_asked
            && let Some(requests) = self.plan.membership.capacity_requests()
        {
            match tokio::time::timeout(Duration::from_secs(5), requests.request(&[])).await {
                Ok(Ok(())) => tracing::info!("withdrew the capacity asked of Ray's autoscaler"),
                Ok(Err(e)) => {
                    tracing::warn!("cannot withdraw the capacity asked of Ray's autoscaler: {e}")
                }
                Err(_) => {
                    tracing::warn!("withdrawing the capacity asked of Ray's autoscaler timed out")
                }
            }
        }
        let mut reporter = self.reporter.take();
        if self.plan.wait.is_some()
            && let Some(r) = reporter.take()
        {
            r.withdraw().await;
        }
        let stopped = nodes.stop(self.plan.stop_grace, Some(shutdown)).await;
        // vLLM's CPU workers (Ray actors) leave shared-memory segments;
        // once Ray is gone, none is mapped any longer.
        crate::serve::shm::remove_orphaned_segments(std::path::Path::new(
            crate::serve::shm::SHM_DIR,
        ));
        if let Some(r) = reporter {
            r.withdraw().await;
        }
        if !stopped {
            return Exit::failed(1, "some of Ray's processes did not stop; see the log above");
        }
        tracing::info!("all Ray processes stopped");
        exit
    }

    /// Starts checking this process's nodes, and on the head following
    /// every node's report, when node health is on.
    fn start_node_health(&mut self, nodes: &RayNodes) {
        let Some(plan) = &self.plan.node_health else {
            return;
        };
        let Some(policy) = self.node_health_policy.take() else {
            tracing::debug!("node health is on but no node-health policy was loaded");
            return;
        };
        let store = self.plan.membership.health_store();
        let probe = GpuProbe::spawn(orchestrator_node_probe::gpu::library_path(), plan.interval);
        let reporter = Reporter::spawn(
            plan,
            policy,
            probe.subscribe(),
            store.clone(),
            Arc::clone(&self.status),
        );
        for node in nodes.running() {
            report_on(&self.plan.start, &reporter, node);
        }
        if self.plan.wait.is_some()
            && let Some(store) = store
        {
            self.board = Some(node_health::board::follow(
                store,
                plan,
                Arc::clone(&self.status),
            ));
        }
        self.reporter = Some(reporter);
    }
}

/// Adds a started node to the reporter's checks.
fn report_on(start: &crate::start::StartPlan, reporter: &Reporter, node: &crate::start::RayNode) {
    {
        let argv = start
            .nodes
            .iter()
            .find(|n| n.label == node.label())
            .map(|n| n.argv.as_slice())
            .unwrap_or_default();
        let raylet = node
            .daemons()
            .iter()
            .find(|d| d.name == "raylet")
            .map(|d| d.pid);
        reporter.add(node.label(), node_health::target_of(argv, raylet));
    }
}

impl RayBackend {
    /// Wait (head), then serve or supervise.
    async fn after_start(
        &mut self,
        nodes: &mut RayNodes,
        shutdown: &Shutdown,
        kubernetes: &mut Option<KubeHandle>,
    ) -> Exit {
        let status = Arc::clone(&self.status);
        let Some(wait) = self.plan.wait.clone() else {
            return self.run_worker(nodes, shutdown).await;
        };
        let (ready, early) = match self.wait(&wait, nodes, shutdown, kubernetes).await {
            Waited::Ready(ready, early) => (ready, early),
            Waited::Ended(exit) => return exit,
        };
        let alive = ready.snapshot.nodes.iter().filter(|n| n.alive).count() as u32;
        status.mark(StartupStep::ReadyDecision, format!("{alive} nodes alive"));
        status.nodes(alive, ready.snapshot.expected.nodes);
        status.readiness("ready".into());
        if let Some(hook) = self.on_ready.take() {
            hook(&ready);
        }
        match self.plan.after_ready {
            AfterReady::Serve => self.serve(&ready, nodes, shutdown, early).await,
            AfterReady::Exit => Exit::ok(),
            AfterReady::Supervise => {
                tracing::info!(
                    nodes = alive,
                    "cluster ready; nothing to serve, supervising Ray"
                );
                status.enter(Phase::Serve);
                status.health(
                    VerdictKind::Healthy,
                    "cluster ready (nothing to serve: serve.model is not set)".into(),
                    true,
                );
                let follow = follow_membership(
                    Arc::clone(&self.plan.membership),
                    Follow::Cluster {
                        expected: ready.snapshot.expected.nodes,
                    },
                    Arc::clone(&status),
                );
                tokio::select! {
                    exit = supervise(nodes, shutdown, &status) => exit,
                    // The watch retries for ever; it ends only with the runtime.
                    () = follow => std::future::pending().await,
                }
            }
        }
    }

    /// A worker: its Ray node supervised, `/readyz` following its node in
    /// the head's GCS, its Ray restarted into a new cluster at the head's
    /// address (a head restarted without GCS fault tolerance).
    async fn run_worker(&mut self, nodes: &mut RayNodes, shutdown: &Shutdown) -> Exit {
        let status = Arc::clone(&self.status);
        status.enter(Phase::Serve);
        status.nodes(1, 1);
        status.health(
            VerdictKind::Healthy,
            "worker: Ray node running".into(),
            true,
        );
        let own = self.reporter.as_ref().map(Reporter::subscribe);
        let grace = self
            .plan
            .node_health
            .as_ref()
            .map_or(Duration::MAX, |p| p.unhealthy_grace);
        let address = self
            .plan
            .start
            .nodes
            .first()
            .map(|n| node_health::target_of(&n.argv, None).address)
            .unwrap_or_default();
        if address.is_empty() {
            return supervise_worker(nodes, shutdown, &status, own, grace).await;
        }
        let source = self.plan.join.as_ref().map_or_else(
            || Arc::clone(&self.plan.membership),
            |j| Arc::clone(&j.cluster),
        );
        loop {
            let follow = follow_membership(
                Arc::clone(&source),
                Follow::OwnNode {
                    address: address.clone(),
                },
                Arc::clone(&status),
            );
            tokio::select! {
                exit = supervise_worker(nodes, shutdown, &status, own.clone(), grace) => return exit,
                // Ends only when the head's GCS came back as a new
                // cluster: this node's Ray is restarted into it.
                () = follow => {}
            }
            let message = format!(
                "the head's GCS ({}) came back as a new cluster without this node (the head restarted without GCS fault tolerance): restarting this node's Ray into it",
                source.describe()
            );
            tracing::warn!("{message}");
            status.event(EventReason::RejoiningCluster, message);
            let restarted = tokio::select! {
                r = nodes.restart_first(&self.plan.start, self.plan.stop_grace, Some(shutdown)) => r,
                () = shutdown.requested() => return Exit::ok(),
            };
            if let Err(e) = restarted {
                let message = format!("cannot rejoin the new cluster: {e}");
                status.fail(EventReason::RayExited, message.clone());
                return Exit::failed(1, message);
            }
            if let (Some(reporter), Some(node)) = (&self.reporter, nodes.running().first()) {
                report_on(&self.plan.start, reporter, node);
            }
            status.health(
                VerdictKind::Healthy,
                "worker: Ray node running".into(),
                true,
            );
        }
    }

    /// What the head's wait follows: the GCS, with the platform's facts.
    fn wait_spec(
        &self,
        plan: &WaitPlan,
        facts: Option<watch::Receiver<orchestrator_domain::ExternalFacts>>,
    ) -> WaitSpec {
        WaitSpec {
            source: Arc::clone(&self.plan.membership),
            expected: plan.expected.clone(),
            timeout: plan.timeout,
            params: plan.params.clone(),
            diagnostics: vec![],
            facts,
            status: Some(Arc::clone(&self.status)),
            health: self.board.clone(),
            request_resources: self.capacity_asked,
            ask_nodes: None,
        }
    }

    async fn wait(
        &mut self,
        plan: &WaitPlan,
        nodes: &mut RayNodes,
        shutdown: &Shutdown,
        kubernetes: &mut Option<KubeHandle>,
    ) -> Waited {
        let status = Arc::clone(&self.status);
        let facts = match kubernetes.as_mut().and_then(|k| k.facts.take()) {
            Some(setup) => setup.await.ok().flatten(),
            None => None,
        };
        let expected = facts
            .as_ref()
            .and_then(|f| f.borrow().expected.clone())
            .unwrap_or_else(|| plan.expected.clone());
        status.nodes(0, expected.nodes);
        status.enter(Phase::Wait);
        // The early launch follows the expected topology as the platform
        // reports it.
        let mut expected_changes = facts.clone();
        // A RayCluster scaled by Ray's autoscaler gets its workers only
        // once Ray sees demand: the head asks for them.
        let autoscaled = facts.as_ref().is_some_and(|f| f.borrow().autoscaling);
        self.capacity_asked = plan.request_resources || autoscaled;
        let spec = self.wait_spec(plan, facts);
        let Some(policies) = self.policies.as_mut() else {
            return Waited::Ended(Exit::failed(1, "the head has no readiness policy loaded"));
        };
        let mut early = EarlyLaunch::new();
        early
            .follow(&self.plan, &status, &mut policies.launch, &expected)
            .await;
        let waiting = wait_for_cluster(&spec, &mut policies.readiness);
        tokio::pin!(waiting);
        let outcome = loop {
            let (running, mut late) = nodes.watch_parts();
            let expected_changed = async {
                match expected_changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let started = tokio::select! {
                r = &mut waiting => break match r {
                    Ok(ready) => Waited::Ready(Box::new(ready), None),
                    Err(e) => {
                        status.fail(EventReason::ClusterNotReady, e.to_string());
                        Waited::Ended(Exit::failed(1, e.to_string()))
                    }
                },
                () = shutdown.requested() => {
                    status.enter(Phase::Stopping);
                    break Waited::Ended(Exit::ok());
                }
                (label, daemon) = running.first_exit(usize::MAX) => {
                    let message = format!("Ray's {daemon} on node {label} during the wait");
                    status.fail(EventReason::RayExited, message.clone());
                    break Waited::Ended(Exit::failed(1, message));
                }
                how = early.wait() => {
                    tracing::warn!(code = ?how.code, signal = ?how.signal, "the early-launched server exited during the wait; it is launched again once the cluster is ready");
                    early.exited(&status, how);
                    continue;
                }
                open = expected_changed => {
                    match (open, expected_changes.as_mut()) {
                        // The wait future holds the readiness policy; the
                        // launch policy is separate.
                        (true, Some(rx)) => {
                            let now = rx.borrow_and_update().expected.clone().unwrap_or_else(|| plan.expected.clone());
                            early.follow(&self.plan, &status, &mut policies.launch, &now).await;
                        }
                        // The watcher ended: the last expectation stands.
                        _ => expected_changes = None,
                    }
                    continue;
                }
                started = late.next() => started,
            };
            match started {
                Ok(node) => adopt(&self.plan, self.reporter.as_ref(), nodes, node),
                Err(e) => {
                    break Waited::Ended(Exit::failed(1, format!("a worker failed to start: {e}")));
                }
            }
        };
        match outcome {
            Waited::Ready(ready, _) => Waited::Ready(ready, early.server.take()),
            Waited::Ended(exit) => {
                early
                    .stop(&self.plan, &status, "the cluster never became ready")
                    .await;
                Waited::Ended(exit)
            }
        }
    }

    /// The serve phase, while the head's own Ray daemons stay watched: if
    /// one dies the server is stopped and the run fails. (A worker's death
    /// reaches the health policy through the membership source.)
    async fn serve(
        &mut self,
        ready: &Ready,
        nodes: &RayNodes,
        shutdown: &Shutdown,
        early: Option<Box<EarlyServer>>,
    ) -> Exit {
        let status = Arc::clone(&self.status);
        let (Some(spec), Some(policies)) = (self.plan.serve.as_ref(), self.policies.as_mut())
        else {
            return Exit::failed(
                1,
                "nothing to serve: the plan has no serve spec or policies",
            );
        };
        let ctx = ServeContext {
            source: self.plan.membership.as_ref(),
            status: &status,
            shutdown,
            health: self.board.as_ref(),
            group: None,
        };
        // A server started early (from the shared path) goes on: the local
        // copy is for launches after it.
        let plan = match serve::plan_launch(ready, spec, &mut policies.launch, ctx, early.is_none())
            .await
        {
            Ok(plan) => plan,
            Err(no) => {
                if let Some(e) = early {
                    e.stop(spec.stop_grace, &status).await;
                }
                return served(&status, no.into());
            }
        };
        // The early server goes on if the cluster formed as it assumed.
        let prelaunched = match early {
            Some(e) if e.plan.argv == plan.argv && e.plan.env == plan.env => Some(e.process),
            Some(e) => {
                let message = format!(
                    "the cluster formed differently from the layout the early launch assumed: relaunching with `{}` (was `{}`)",
                    orchestrator_domain::secrets::shown(&plan.argv),
                    orchestrator_domain::secrets::shown(&e.plan.argv)
                );
                tracing::warn!("{message}");
                status.event(EventReason::ServerRestarting, message);
                e.stop(spec.stop_grace, &status).await;
                None
            }
            None => None,
        };
        if spec.preflight.on() {
            if prelaunched.is_some() {
                tracing::warn!(
                    "gang preflight skipped: the server was launched early (the launch policy's early-launch); set early-launch=false for a preflight before the launch"
                );
            } else if let Err(message) =
                ray_preflight(spec, &plan, ready, self.plan.membership.as_ref(), &status).await
            {
                status.fail(EventReason::PreflightFailed, message.clone());
                return Exit::failed(1, message);
            }
        }
        let serving = serve::serve_planned(spec, &plan, ready, policies, ctx, prelaunched);
        let outcome = tokio::select! {
            outcome = serving => outcome,
            (label, daemon) = nodes.first_exit(1) => {
                let message = format!("Ray's {daemon} on node {label} while serving; stopping");
                status.fail(EventReason::RayExited, message.clone());
                return Exit::failed(1, message);
            }
        };
        served(&status, outcome)
    }
}

/// The gang preflight over the Ray cluster before `launch` starts: a
/// task per alive node (the head's is rank 0, its master on the head's
/// address), run by the server's own Python. `Err` when it failed and is
/// required.
async fn ray_preflight(
    spec: &serve::ServeSpec,
    launch: &orchestrator_domain::LaunchPlan,
    ready: &Ready,
    membership: &dyn crate::membership::MembershipSource,
    status: &Status,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let program = launch.argv.first().cloned().unwrap_or_default();
    let python = spec.preflight.python_for(&program);
    let alive: Vec<&orchestrator_domain::Node> =
        ready.snapshot.nodes.iter().filter(|n| n.alive).collect();
    let head = alive
        .iter()
        .find(|n| n.is_head)
        .map_or_else(|| "127.0.0.1".to_string(), |n| n.address.clone());
    let port = crate::preflight::free_port(&head).unwrap_or(29_499);
    let env: Vec<(String, String)> = membership
        .serving_env()
        .into_iter()
        .chain(crate::preflight::network_env(&launch.env))
        .map(|kv| (kv.key, kv.value))
        .collect();
    let gcs = env
        .iter()
        .find(|(k, _)| k == "RAY_ADDRESS")
        .map_or_else(|| "auto".to_string(), |(_, v)| v.clone());
    tracing::info!(
        nodes = alive.len(),
        "gang preflight: a check on every Ray node"
    );
    let ranks = match crate::preflight::check_ray(
        &spec.preflight,
        &python,
        &gcs,
        &format!("{head}:{port}"),
        &env,
    )
    .await
    {
        Ok(ranks) => ranks,
        Err(e) => vec![crate::preflight::RankCheck::failed(0, &head, e)],
    };
    let addresses = alive
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u32, n.address.clone()))
        .collect();
    let world = (alive.len() as u32).max(ranks.len() as u32);
    let result =
        crate::preflight::judge(&spec.preflight, world, &addresses, ranks, started.elapsed());
    status.preflight_done(spec.preflight.mode, result)
}

/// A worker's supervision: [`supervise`], and an exit with
/// [`UNHEALTHY_EXIT_CODE`] once one of its nodes has been unhealthy for
/// `grace` (so that Kubernetes replaces the pod).
async fn supervise_worker(
    nodes: &RayNodes,
    shutdown: &Shutdown,
    status: &Status,
    own: Option<watch::Receiver<Vec<OwnHealth>>>,
    grace: Duration,
) -> Exit {
    let Some(mut own) = own else {
        return supervise(nodes, shutdown, status).await;
    };
    let unhealthy_for_grace = node_health::unhealthy_for(&mut own, grace);
    tokio::select! {
        exit = supervise(nodes, shutdown, status) => exit,
        reason = unhealthy_for_grace => {
            let message = format!(
                "this node stayed unhealthy for {} s (node-health.unhealthy-grace-seconds): {reason}; stopping so that the pod is replaced",
                grace.as_secs()
            );
            status.fail(EventReason::NodeUnhealthy, message.clone());
            Exit::failed(UNHEALTHY_EXIT_CODE, message)
        }
    }
}

/// What `/readyz` follows in the GCS after the start.
enum Follow {
    /// A head with nothing to serve: the expected number of nodes alive.
    Cluster {
        /// Nodes expected.
        expected: u32,
    },
    /// A worker: its own node (by address) alive in the GCS.
    OwnNode {
        /// This node's address.
        address: String,
    },
}

/// Keeps `/readyz` and `/status` on the GCS's membership after the start,
/// so a node that dies, a node the GCS declared dead (a frozen raylet) or
/// a GCS that went away shows within one update, not when a raylet exits
/// a minute later (or never). Runs until the watch ends.
///
/// For a worker it returns when the GCS, after a lost connection, answers
/// with a snapshot that does not hold this node at all: a new cluster at
/// the head's address (a head restarted without GCS fault tolerance, whose
/// GCS has never heard of this node; with fault tolerance the recovered
/// GCS still holds it). Otherwise it runs until the watch ends.
async fn follow_membership(
    source: Arc<dyn crate::membership::MembershipSource>,
    rule: Follow,
    status: Arc<Status>,
) {
    use orchestrator_domain::{ClusterView, UpdateSource};
    let mut updates = source.watch();
    let mut view = ClusterView::default();
    let mut last: Option<(bool, String)> = None;
    let mut was_lost = false;
    while let Some(update) = updates.recv().await {
        let lost = match &update.source {
            UpdateSource::Disconnected { error } => Some(error.clone()),
            _ => None,
        };
        let fresh_snapshot = was_lost && update.source == UpdateSource::Snapshot;
        was_lost = lost.is_some() || (was_lost && !fresh_snapshot);
        update.apply_into(&mut view);
        if let Follow::OwnNode { address } = &rule
            && fresh_snapshot
            && !view.nodes.iter().any(|n| &n.address == address)
        {
            tracing::warn!(
                nodes = view.nodes.len(),
                "the GCS came back without this node ({address}) in its table: a new cluster"
            );
            return;
        }
        let alive = view.alive().count() as u32;
        let (ready, text) = match (&rule, lost) {
            (_, Some(error)) => (false, format!("GCS connection lost: {error}")),
            (Follow::Cluster { expected }, None) => {
                status.nodes(alive, *expected);
                if alive < *expected {
                    (
                        false,
                        format!("{alive} of {expected} nodes alive (nothing to serve)"),
                    )
                } else {
                    (
                        true,
                        "cluster ready (nothing to serve: serve.model is not set)".to_string(),
                    )
                }
            }
            (Follow::OwnNode { address }, None) => {
                match view
                    .nodes
                    .iter()
                    .filter(|n| &n.address == address)
                    .max_by_key(|n| (n.alive, n.start_time_ms))
                {
                    Some(n) if n.alive => (true, "worker: Ray node running".to_string()),
                    Some(_) => (
                        false,
                        format!(
                            "the GCS declared this node ({address}) dead; its raylet stops soon"
                        ),
                    ),
                    None => (false, format!("this node ({address}) is not in the GCS")),
                }
            }
        };
        if last.as_ref() != Some(&(ready, text.clone())) {
            if ready {
                tracing::info!("{text}");
            } else {
                tracing::warn!("{text}");
            }
            let kind = if ready {
                VerdictKind::Healthy
            } else {
                VerdictKind::Degraded
            };
            status.health(kind, text.clone(), ready);
            last = Some((ready, text));
        }
    }
}

/// Waits for a stop request (exit 0) or any node's daemon exit (exit 1).
async fn supervise(nodes: &RayNodes, shutdown: &Shutdown, status: &Status) -> Exit {
    tokio::select! {
        () = shutdown.requested() => {
            status.enter(Phase::Stopping);
            Exit::ok()
        }
        (label, daemon) = nodes.first_exit(usize::MAX) => {
            let message = format!("Ray's {daemon} on node {label} unexpectedly");
            status.fail(EventReason::RayExited, message.clone());
            Exit::failed(1, message)
        }
    }
}

/// A worker started late (during the wait) joins the nodes the head
/// supervises, with its node-health checks.
fn adopt(
    plan: &Plan,
    reporter: Option<&Reporter>,
    nodes: &mut RayNodes,
    node: crate::start::RayNode,
) {
    if let Some(reporter) = reporter {
        report_on(&plan.start, reporter, &node);
    }
    nodes.adopt(node);
}
