//! Early launch of a native group: while ranks register, the leader asks
//! the launch policy for the group as it will be, starts rank 0's part
//! and gives every rank present, and every rank that registers, its part
//! (vLLM's own rendezvous holds them until all are there). At the ready
//! decision the group goes on when the plan for the real group is the
//! same and no rank's early process exited; otherwise the whole group
//! starts again. Entry point: [`EarlyGroup::launch`].

use super::leader::LeaderPlan;
use super::rendezvous::Rendezvous;
use crate::endpoints::Status;
use crate::lifecycle::AfterReady;
use crate::serve::{self, ServerProcess, ServingGroup};
use orchestrator_domain::{ExitStatus, LaunchPlan, StartupStep};
use orchestrator_policy_host::LaunchPolicy;
use std::time::Duration;

/// Rank 0's process started before the group was ready, and the plan
/// every rank was given.
pub(super) struct EarlyGroup {
    plan: LaunchPlan,
    process: ServerProcess,
}

impl EarlyGroup {
    /// Starts the group early when the launch policy's plan for the group
    /// as it will be says so; `None` when it does not, or cannot.
    pub(super) fn launch(
        plan: &LeaderPlan,
        rendezvous: &Rendezvous,
        launch: &mut LaunchPolicy,
        status: &Status,
    ) -> Option<Self> {
        let (AfterReady::Serve, Some(spec)) = (plan.after_ready, plan.serve.as_ref()) else {
            return None;
        };
        if spec.preflight.on() {
            tracing::info!("no early launch: the gang preflight runs before the launch");
            return None;
        }
        if spec.weights_wait.is_some() {
            tracing::info!("no early launch: the weights (serve.weights) reach every node first");
            return None;
        }
        let cluster = rendezvous.expected_cluster(plan.wait_timeout.as_millis() as u64);
        let serving_env = crate::membership::MembershipSource::serving_env(rendezvous);
        let planned = match serve::ask(launch, cluster, spec, &serving_env, None) {
            Ok(p) if p.early => p,
            Ok(_) => {
                tracing::info!(
                    "no early launch: the launch policy starts the group once every rank is present"
                );
                return None;
            }
            Err(e) => {
                tracing::info!("no early launch for the group: {e}");
                return None;
            }
        };
        let env: Vec<(String, String)> = planned
            .env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let watch =
            crate::serve::startup::OutputWatch::new(0, spec.probe_host(), &planned.argv, &env);
        let process = match ServerProcess::spawn("vllm", &planned.argv, &env, watch) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "early launch failed, the group starts once every rank is present: {e}"
                );
                return None;
            }
        };
        tracing::info!(
            "early launch: rank 0 starts while the ranks register, each rank as it registers: {}",
            orchestrator_domain::secrets::shown(&planned.argv)
        );
        rendezvous.start_early(&planned);
        status.mark(StartupStep::Launch, "early, while the ranks register");
        if let Some(pid) = process.pid() {
            status.mark(StartupStep::ServerProcessUp, format!("pid {pid}"));
        }
        status.server_pid(process.pid());
        Some(Self {
            plan: planned,
            process,
        })
    }

    /// Waits for rank 0's early process to exit; pending forever without
    /// one.
    pub(super) async fn exited(early: &mut Option<Self>) -> ExitStatus {
        match early.as_mut() {
            Some(e) => e.process.wait().await,
            None => std::future::pending().await,
        }
    }

    /// How rank 0's early process failed (after [`exited`](Self::exited)).
    pub(super) fn failure(&self, how: ExitStatus) -> orchestrator_domain::StartupFailure {
        self.process.watch().failure(how)
    }

    /// Stops the early group: rank 0's process, then every rank's.
    pub(super) async fn stop(
        mut self,
        rendezvous: &Rendezvous,
        grace: Duration,
        status: &Status,
        why: &str,
    ) {
        tracing::info!("stopping the early-launched group: {why}");
        rendezvous.close_early();
        tokio::join!(self.process.stop(grace), rendezvous.stop(grace));
        status.server_pid(None);
    }

    /// At the ready decision: rank 0's process when the group goes on
    /// (the same plan for the real group, every rank given it, no early
    /// exit); otherwise it is stopped, and the serve phase starts the
    /// whole group again.
    pub(super) async fn keep(
        mut self,
        launch: &LaunchPlan,
        rendezvous: &Rendezvous,
        grace: Duration,
        status: &Status,
    ) -> Option<ServerProcess> {
        let every_rank_runs = rendezvous.close_early();
        let why = if self.plan != *launch {
            format!(
                "the group formed differently from the layout the early launch assumed: relaunching with `{}` (was `{}`)",
                orchestrator_domain::secrets::shown(&launch.argv),
                orchestrator_domain::secrets::shown(&self.plan.argv)
            )
        } else if !every_rank_runs {
            "a rank's early process exited, or a rank registered again after the early launch: the group starts again".to_string()
        } else {
            tracing::info!(
                "the early-launched group goes on: every rank got the plan of the group as it formed"
            );
            return Some(self.process);
        };
        tracing::warn!("{why}");
        self.process.stop(grace).await;
        status.server_pid(None);
        None
    }
}
