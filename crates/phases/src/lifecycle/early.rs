//! Early launch: the serving process started for the expected layout while
//! the cluster forms, so that its start overlaps the workers' joining.
//! Entry point: [`EarlyLaunch`].
//!
//! The launch policy decides (its plan says `early`); the head asks it for a
//! plan for a cluster shaped like the expected topology, never for a layout
//! that topology cannot hold. When the expected topology changes during the
//! wait (a RayCluster scaled), the plan is asked again and a server started
//! for the old layout is replaced. At the ready decision the serve phase
//! keeps the server when the real cluster gets the same plan.

use super::Plan;
use super::plan::{AfterReady, shaped_like};
use crate::endpoints::Status;
use crate::serve::{NoPlan, ServerProcess};
use orchestrator_domain::{EventReason, LaunchPlan, StartupStep, Topology};
use orchestrator_policy_host::LaunchPolicy;
use std::time::Duration;

/// A serving process started before the cluster was ready, for the plan
/// the launch policy made for the expected topology.
pub(super) struct EarlyServer {
    pub(super) plan: LaunchPlan,
    pub(super) process: ServerProcess,
}

impl EarlyServer {
    /// Stops the process (SIGTERM, `grace`, SIGKILL) and clears its pid
    /// from the status.
    pub(super) async fn stop(mut self, grace: Duration, status: &Status) {
        self.process.stop(grace).await;
        status.server_pid(None);
    }
}

/// The early launch of one wait phase: the expected topology it planned
/// for and the server it started, if any.
pub(super) struct EarlyLaunch {
    expected: Option<Topology>,
    pub(super) server: Option<Box<EarlyServer>>,
}

impl EarlyLaunch {
    /// No server yet.
    pub(super) fn new() -> Self {
        Self {
            expected: None,
            server: None,
        }
    }

    /// Plans for `expected` and starts, replaces or stops the server so that
    /// it matches the plan; nothing happens when `expected` is what the
    /// last call planned for.
    pub(super) async fn follow(
        &mut self,
        plan: &Plan,
        status: &Status,
        launch: &mut LaunchPolicy,
        expected: &Topology,
    ) {
        if self.expected.as_ref() == Some(expected) {
            return;
        }
        let first = self.expected.is_none();
        self.expected = Some(expected.clone());
        let planned = plan_for(plan, launch, expected);
        let grace = stop_grace(plan);
        match (self.server.take(), planned) {
            (Some(server), Some(new))
                if server.plan.argv == new.argv && server.plan.env == new.env =>
            {
                self.server = Some(server);
            }
            (Some(server), new) => {
                let message = match &new {
                    Some(new) => format!(
                        "the expected layout changed during the wait ({} nodes, {} GPUs): relaunching the early server with `{}` (was `{}`)",
                        expected.nodes,
                        expected.gpus,
                        orchestrator_domain::secrets::shown(&new.argv),
                        orchestrator_domain::secrets::shown(&server.plan.argv)
                    ),
                    None => format!(
                        "the expected layout changed during the wait ({} nodes, {} GPUs) and the launch policy no longer launches early: stopping the early server",
                        expected.nodes, expected.gpus
                    ),
                };
                tracing::warn!("{message}");
                status.event(EventReason::ServerRestarting, message);
                server.stop(grace, status).await;
                self.server = new.and_then(|p| start(p, plan, status));
            }
            (None, Some(new)) => {
                if !first {
                    tracing::info!(
                        "the expected layout changed during the wait ({} nodes, {} GPUs): launching early",
                        expected.nodes,
                        expected.gpus
                    );
                }
                self.server = start(new, plan, status);
            }
            (None, None) => {}
        }
    }

    /// The server exited during the wait: it is launched again once the
    /// cluster is ready (or when the expected layout changes).
    pub(super) fn exited(&mut self, status: &Status, how: orchestrator_domain::ExitStatus) {
        status.server_pid(None);
        if let Some(server) = self.server.take() {
            status.startup_failed(server.process.watch().failure(how));
        }
    }

    /// Waits for the server's exit; pending forever without one.
    pub(super) async fn wait(&mut self) -> orchestrator_domain::ExitStatus {
        match self.server.as_mut() {
            Some(e) => e.process.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Stops the server, if one runs, saying why.
    pub(super) async fn stop(&mut self, plan: &Plan, status: &Status, why: &str) {
        if let Some(server) = self.server.take() {
            tracing::info!("stopping the early-launched server: {why}");
            server.stop(stop_grace(plan), status).await;
        }
    }
}

/// Between SIGTERM and SIGKILL when the early server is stopped.
fn stop_grace(plan: &Plan) -> Duration {
    plan.serve
        .as_ref()
        .map_or(Duration::from_secs(5), |s| s.stop_grace)
}

/// The launch policy's plan for a cluster shaped like `expected`, when it
/// says to launch early; `None` otherwise (logged).
fn plan_for(plan: &Plan, launch: &mut LaunchPolicy, expected: &Topology) -> Option<LaunchPlan> {
    let (AfterReady::Serve, Some(spec)) = (plan.after_ready, plan.serve.as_ref()) else {
        return None;
    };
    if spec.preflight.on() || spec.weights_wait.is_some() {
        // The gang preflight runs before the launch; the weights are on
        // every node first.
        return None;
    }
    let deadline_ms = plan
        .wait
        .as_ref()
        .map_or(0, |w| w.timeout.as_millis() as u64);
    let cluster = shaped_like(expected, None, None, deadline_ms);
    let serving_env = plan.membership.serving_env();
    match crate::serve::ask(launch, cluster, spec, &serving_env, None) {
        Ok(p) if p.early => Some(p),
        Ok(_) => None,
        Err(e @ NoPlan::Failed(_)) => {
            tracing::warn!("no early launch for the expected layout: {e}");
            None
        }
        Err(e) => {
            tracing::info!("no early launch for the expected layout: {e}");
            None
        }
    }
}

/// Starts the server for `planned`; `None` when it cannot be started
/// (logged: the server then starts once the cluster is ready).
fn start(planned: LaunchPlan, plan: &Plan, status: &Status) -> Option<Box<EarlyServer>> {
    let env: Vec<(String, String)> = planned
        .env
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    tracing::info!(
        "early launch: starting the server for the expected layout while the cluster forms (its placement group waits for the workers): {}",
        orchestrator_domain::secrets::shown(&planned.argv)
    );
    let host = plan.serve.as_ref().map_or("", |s| s.probe_host());
    let watch = crate::serve::startup::OutputWatch::new(0, host, &planned.argv, &env);
    match ServerProcess::spawn("vllm", &planned.argv, &env, watch) {
        Ok(process) => {
            status.mark(StartupStep::Launch, "early, for the expected layout");
            if let Some(pid) = process.pid() {
                status.mark(StartupStep::ServerProcessUp, format!("pid {pid}"));
            }
            status.server_pid(process.pid());
            Some(Box::new(EarlyServer {
                plan: planned,
                process,
            }))
        }
        Err(e) => {
            tracing::warn!("early launch failed, the server starts once the cluster is ready: {e}");
            None
        }
    }
}
