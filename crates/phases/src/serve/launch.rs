//! Turning a cluster into the serving process's command: the launch
//! policy's plan, plus what the membership source needs the server to
//! know (Ray: `RAY_ADDRESS`), checked against the backend. Every launch
//! goes through [`ask`]: at ready ([`plan_launch`]), early (for the
//! expected layout), `orchestrator plan`, and the native group's ranks.

use super::{ServeContext, ServeOutcome, ServeSpec};
use crate::endpoints::Status;
use crate::wait::Ready;
use orchestrator_domain::{ClusterSnapshot, KeyValue, LaunchPlan, LaunchRequest};
use orchestrator_policy_host::{LaunchPolicy, World};
use std::path::Path;
use std::time::Instant;

/// Why the launch policy gave no plan to run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoPlan {
    /// The policy refused the layout.
    #[error("the launch policy refused to launch: {0}")]
    Refused(String),
    /// The plugin failed (trapped, timed out, broke its contract).
    #[error("the launch policy failed: {0}")]
    Failed(String),
    /// The plan does not fit the backend (ranks for Ray, none or the
    /// wrong ones for a native group).
    #[error(
        "the launch policy {policy}'s plan cannot run the group: {error} (a launch policy of contract 0.1.0 cannot plan ranks: use a 0.2.0 one such as builtin:launch/vllm)"
    )]
    WrongRanks {
        /// The policy's name.
        policy: String,
        /// What does not fit.
        error: String,
    },
}

impl From<NoPlan> for ServeOutcome {
    fn from(no: NoPlan) -> Self {
        ServeOutcome::NotLaunched {
            refused: !matches!(no, NoPlan::Failed(_)),
            reason: no.to_string(),
        }
    }
}

/// Asks the launch policy for the plan of `cluster` with `spec`'s
/// settings (a native group's in `spec.settings.native_group`) and
/// parameters, adds `serving_env` where the plan does not set it, and
/// checks the plan's ranks against the backend. The call's time goes to
/// `status`, when given.
pub fn ask(
    launch: &mut LaunchPolicy,
    cluster: ClusterSnapshot,
    spec: &ServeSpec,
    serving_env: &[KeyValue],
    status: Option<&Status>,
) -> Result<LaunchPlan, NoPlan> {
    let request = LaunchRequest {
        cluster,
        settings: spec.settings.clone(),
    };
    let asked = Instant::now();
    let answer = launch.plan(&request, &spec.launch_params);
    if let Some(status) = status {
        status.policy_call(World::Launch, asked.elapsed().as_secs_f64());
    }
    let mut plan = match answer {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => return Err(NoPlan::Refused(e.to_string())),
        Err(e) => return Err(NoPlan::Failed(e.to_string())),
    };
    for kv in serving_env {
        if !plan.env.iter().any(|e| e.key == kv.key) {
            plan.env.push(kv.clone());
        }
    }
    plan.check_ranks(request.settings.native_group.as_ref())
        .map_err(|error| NoPlan::WrongRanks {
            policy: launch.name().to_string(),
            error,
        })?;
    Ok(plan)
}

/// Asks the launch policy for the plan; a refusal or a failure is the
/// outcome of the serve phase (nothing is started). With a local copy of
/// the model (`[serve.prefetch] copy-to`) and `use_local_copy`, the policy
/// is given the copy's path when every serving node's copy is complete
/// (else the shared path, saying why).
pub fn plan_launch(
    ready: &Ready,
    spec: &ServeSpec,
    launch: &mut LaunchPolicy,
    ctx: ServeContext<'_>,
    use_local_copy: bool,
) -> Result<LaunchPlan, NoPlan> {
    let mut settings = spec.settings.clone();
    if let (Some(to), true) = (&spec.local_copy, use_local_copy) {
        match local_copy_complete(ready, to, &ctx) {
            Ok(()) => {
                tracing::info!(
                    "serving the model from the local copies at {} (every serving node's copy is complete)",
                    to.display()
                );
                settings.model = to.display().to_string();
            }
            Err(why) => tracing::info!("serving the model from {}: {why}", settings.model),
        }
    }
    let spec = ServeSpec {
        settings,
        ..spec.clone()
    };
    let plan = ask(
        launch,
        ready.snapshot.clone(),
        &spec,
        &ctx.source.serving_env(),
        Some(ctx.status),
    )?;
    tracing::info!(
        env = %orchestrator_domain::secrets::secrets().show_env(&plan.env),
        "launching: {}",
        orchestrator_domain::secrets::shown(&plan.argv)
    );
    Ok(plan)
}

/// Whether every alive node of the ready cluster reported a complete copy
/// at `to` (through node health), and this node's own copy is complete.
fn local_copy_complete(ready: &Ready, to: &Path, ctx: &ServeContext<'_>) -> Result<(), String> {
    let path = to.display().to_string();
    let own = ctx.status.prefetch_progress();
    let own_done = own.as_ref().is_some_and(|p| {
        p.copy_to.as_deref() == Some(to) && p.state == crate::prefetch::PrefetchState::Done
    });
    if !own_done {
        let (done, total) = own.map_or((0, 0), |p| (p.bytes_done, p.bytes_total));
        return Err(format!(
            "this node's copy to {path} is not complete ({} of {} MiB)",
            done >> 20,
            total >> 20
        ));
    }
    let alive: Vec<_> = ready.snapshot.nodes.iter().filter(|n| n.alive).collect();
    if alive.len() <= 1 {
        return Ok(());
    }
    let Some(board) = ctx.health else {
        return Err(
            "node health is off, so the other nodes' copies cannot be confirmed ([node-health] enabled = true publishes them)".into(),
        );
    };
    let board = board.borrow().clone();
    for node in alive {
        let copy = board
            .entries
            .get(&node.id)
            .and_then(|e| e.report.local_copy.clone());
        match copy {
            Some(c) if c.path == path && c.complete => {}
            Some(c) if c.path == path => {
                return Err(format!(
                    "node {}'s copy is not complete ({} of {} MiB)",
                    node.address,
                    c.bytes_done >> 20,
                    c.bytes_total >> 20
                ));
            }
            _ => return Err(format!("node {} reports no copy at {path}", node.address)),
        }
    }
    Ok(())
}
