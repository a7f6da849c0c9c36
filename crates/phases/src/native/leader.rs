//! The leader (rank 0): the rendezvous's membership decided by the
//! readiness policy, every rank's argv from the launch policy, rank 0's
//! process supervised by the health loop with the other ranks as its
//! [`ServingGroup`](crate::serve::ServingGroup). Entry point:
//! [`run_leader`].

use super::early::EarlyGroup;
use super::rendezvous::Rendezvous;
use crate::endpoints::Status;
use crate::lifecycle::{AfterReady, Exit, served};
use crate::policies::Policies;
use crate::serve::{self, ServeContext, ServeSpec};
use crate::supervision::Shutdown;
use crate::wait::{WaitSpec, wait_for_cluster};
use orchestrator_domain::{
    EventReason, KeyValue, NativeGroup, Phase, StartupStep, Topology, VerdictKind,
};
use std::sync::Arc;
use std::time::Duration;

/// What the leader waits for and serves.
#[derive(Debug, Clone)]
pub struct LeaderPlan {
    /// Ranks in the group.
    pub(crate) group_size: u32,
    /// Where torch.distributed meets: the leader's address as the other
    /// ranks reach it.
    pub master_addr: String,
    /// And its port.
    pub master_port: u16,
    /// The expected topology (nodes: the group size).
    pub expected: Topology,
    /// How long the group may take to form.
    pub wait_timeout: Duration,
    /// The readiness policy's parameters.
    pub readiness_params: Vec<KeyValue>,
    /// What to serve (none: the group is only formed).
    pub serve: Option<ServeSpec>,
    /// What follows the ready decision.
    pub(crate) after_ready: AfterReady,
    /// Kubernetes awareness (`[kubernetes] enabled`): the group's
    /// LeaderWorkerSet and worker pods, Events on the leader's pod.
    pub kubernetes: Option<orchestrator_kubernetes::KubernetesConfig>,
}

impl LeaderPlan {
    /// The group the launch policy is given.
    pub fn group(&self) -> NativeGroup {
        NativeGroup {
            nodes: self.group_size,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
        }
    }
}

/// What the leader works with besides its plan.
pub struct Around<'a> {
    /// Every rank's own health, when node health is on.
    pub board: Option<tokio::sync::watch::Receiver<Arc<crate::node_health::Board>>>,
    /// The LeaderWorkerSet group's facts, when Kubernetes awareness is on.
    pub facts: Option<tokio::sync::watch::Receiver<orchestrator_domain::ExternalFacts>>,
    /// Called once the group is ready.
    pub on_ready: Option<crate::lifecycle::ReadyHook>,
    /// What `/status` shows.
    pub status: &'a Arc<Status>,
    /// SIGTERM / SIGINT.
    pub shutdown: &'a Shutdown,
}

/// Waits for every rank, then serves with the whole group until a stop
/// request or the health policy's shutdown. Every rank's process is
/// stopped (by order) before this returns.
pub async fn run_leader(
    plan: &LeaderPlan,
    rendezvous: &Rendezvous,
    policies: &mut Policies,
    around: Around<'_>,
) -> Exit {
    let Around {
        board,
        facts,
        on_ready,
        status,
        shutdown,
    } = around;
    if shutdown.is_requested() {
        return Exit::ok();
    }
    let source: Arc<dyn crate::membership::MembershipSource> = Arc::new(rendezvous.clone());
    status.nodes(1, plan.group_size);
    status.enter(Phase::Wait);
    status.mark(StartupStep::RayUp, "native rendezvous on the leader");
    let spec = wait_spec(plan, &source, facts, board.clone(), status);
    let grace = plan
        .serve
        .as_ref()
        .map_or(Duration::from_secs(5), |s| s.stop_grace);
    let (ready, early) =
        match wait_for_group(plan, rendezvous, policies, &spec, status, shutdown).await {
            Ok(waited) => waited,
            Err(exit) => return exit,
        };
    let alive = ready.snapshot.nodes.iter().filter(|n| n.alive).count() as u32;
    status.mark(StartupStep::ReadyDecision, format!("{alive} ranks present"));
    status.nodes(alive, plan.group_size);
    status.readiness("ready".into());
    if let Some(hook) = on_ready {
        hook(&ready);
    }
    let spec = match (&plan.serve, plan.after_ready) {
        (_, AfterReady::Exit) => return Exit::ok(),
        (Some(spec), AfterReady::Serve) => spec,
        _ => return formed_with_nothing_to_serve(status, shutdown).await,
    };
    let ctx = ServeContext {
        source: source.as_ref(),
        status,
        shutdown,
        health: board.as_ref(),
        group: Some(rendezvous),
    };
    // A group started early (from the shared path) goes on: the local
    // copies are for launches after it.
    let use_copies = early.is_none();
    let launch = match serve::plan_launch(&ready, spec, &mut policies.launch, ctx, use_copies).await
    {
        Ok(launch) => launch,
        Err(no) => {
            if let Some(early) = early {
                early
                    .stop(rendezvous, grace, status, "no launch at ready")
                    .await;
            }
            return served(status, no.into());
        }
    };
    for rank in &launch.ranks {
        tracing::info!(
            rank = rank.rank,
            "rank's plan: {}",
            orchestrator_domain::secrets::shown(&rank.argv)
        );
    }
    if spec.preflight.on() {
        if early.is_some() {
            tracing::warn!(
                "gang preflight skipped: the group was launched early (the launch policy's early-launch); set early-launch=false for a preflight before the launch"
            );
        } else if let Err(message) =
            preflight(plan, rendezvous, spec, &launch, &ready, status).await
        {
            status.fail(EventReason::PreflightFailed, message.clone());
            return Exit::failed(1, message);
        }
    }
    let prelaunched = match early {
        Some(early) => early.keep(&launch, rendezvous, grace, status).await,
        None => None,
    };
    let outcome = serve::serve_planned(spec, &launch, &ready, policies, ctx, prelaunched).await;
    served(status, outcome)
}

/// The gang preflight over the group, before `launch` starts: every rank
/// checks a collective over the leader's address with the server's own
/// Python and network settings. `Err` when it failed and is required.
async fn preflight(
    plan: &LeaderPlan,
    rendezvous: &Rendezvous,
    spec: &serve::ServeSpec,
    launch: &orchestrator_domain::LaunchPlan,
    ready: &crate::wait::Ready,
    status: &Status,
) -> Result<(), String> {
    let program = launch.argv.first().cloned().unwrap_or_default();
    let python = spec.preflight.python_for(&program);
    let port = crate::preflight::free_port(&plan.master_addr).unwrap_or(plan.master_port + 1);
    let own_gpus = ready
        .snapshot
        .nodes
        .iter()
        .find(|n| n.is_head)
        .map_or(0, |n| n.resources.gpu as u32);
    let order = super::protocol::PreflightOrder {
        world: plan.group_size,
        master: format!("{}:{port}", plan.master_addr),
        python: python.display().to_string(),
        backend: spec.preflight.backend,
        bytes: spec.preflight.bytes,
        timeout_seconds: spec.preflight.timeout.as_secs(),
        check_gpus: spec.preflight.check_gpus,
        env: crate::preflight::network_env(&launch.env),
    };
    let result = rendezvous.preflight(&spec.preflight, order, own_gpus).await;
    status.preflight_done(spec.preflight.mode, result)
}

/// The wait on the ranks registered with the rendezvous.
fn wait_spec(
    plan: &LeaderPlan,
    source: &Arc<dyn crate::membership::MembershipSource>,
    facts: Option<tokio::sync::watch::Receiver<orchestrator_domain::ExternalFacts>>,
    board: Option<tokio::sync::watch::Receiver<Arc<crate::node_health::Board>>>,
    status: &Arc<Status>,
) -> WaitSpec {
    WaitSpec {
        source: Arc::clone(source),
        expected: plan.expected.clone(),
        timeout: plan.wait_timeout,
        params: plan.readiness_params.clone(),
        diagnostics: vec![format!(
            "backend native: ranks 1 to {} register with this leader",
            plan.group_size.saturating_sub(1)
        )],
        facts,
        status: Some(Arc::clone(status)),
        health: board,
        request_resources: false,
        ask_nodes: None,
    }
}

/// A group formed without a model to serve: healthy until asked to stop.
async fn formed_with_nothing_to_serve(status: &Status, shutdown: &Shutdown) -> Exit {
    status.enter(Phase::Serve);
    status.health(
        VerdictKind::Healthy,
        "group formed (nothing to serve: serve.model is not set)".into(),
        true,
    );
    shutdown.requested().await;
    status.enter(Phase::Stopping);
    Exit::ok()
}

/// The wait for every rank, with the group launched early beside it when
/// the launch policy says so: the ready group and the early group, or
/// the exit (the group did not form, or a stop was requested; the early
/// group stopped).
async fn wait_for_group(
    plan: &LeaderPlan,
    rendezvous: &Rendezvous,
    policies: &mut Policies,
    spec: &WaitSpec,
    status: &Arc<Status>,
    shutdown: &Shutdown,
) -> Result<(crate::wait::Ready, Option<EarlyGroup>), Exit> {
    let grace = plan
        .serve
        .as_ref()
        .map_or(Duration::from_secs(5), |s| s.stop_grace);
    let mut early = EarlyGroup::launch(plan, rendezvous, &mut policies.launch, status);
    let mut waiting = Box::pin(wait_for_cluster(spec, &mut policies.readiness));
    let waited = loop {
        tokio::select! {
            r = &mut waiting => break Some(r),
            how = EarlyGroup::exited(&mut early) => {
                tracing::warn!(
                    "rank 0's early-launched serving process {} during the wait: the group starts again once it is ready",
                    super::rendezvous::describe_exit(&how)
                );
                status.server_pid(None);
                if let Some(e) = early.take() {
                    status.startup_failed(e.failure(how));
                }
                rendezvous.close_early();
            }
            () = shutdown.requested() => break None,
        }
    };
    drop(waiting);
    match waited {
        Some(Ok(ready)) => Ok((ready, early)),
        Some(Err(e)) => {
            if let Some(early) = early {
                early
                    .stop(rendezvous, grace, status, "the group did not form")
                    .await;
            }
            let missing = rendezvous.missing();
            let message = if missing.is_empty() {
                e.to_string()
            } else {
                format!("{e}\nranks that never registered with this leader: {missing:?}")
            };
            status.fail(EventReason::ClusterNotReady, message.clone());
            Err(Exit::failed(1, message))
        }
        None => {
            status.enter(Phase::Stopping);
            if let Some(early) = early {
                early
                    .stop(rendezvous, grace, status, "a stop was requested")
                    .await;
            }
            Err(Exit::ok())
        }
    }
}
