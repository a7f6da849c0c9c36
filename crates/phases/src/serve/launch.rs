//! Turning the ready cluster into the serving process's command: the
//! launch policy's plan, plus what the membership source needs the
//! server to know (Ray: `RAY_ADDRESS`).

use super::{ServeContext, ServeOutcome, ServeSpec};
use crate::wait::Ready;
use orchestrator_domain::{LaunchPlan, LaunchRequest};
use orchestrator_policy_host::{LaunchPolicy, World};
use std::path::Path;
use std::time::Instant;

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
) -> Result<LaunchPlan, ServeOutcome> {
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
    let request = LaunchRequest {
        cluster: ready.snapshot.clone(),
        settings,
    };
    let asked = Instant::now();
    let answer = launch.plan(&request, &spec.launch_params);
    ctx.status
        .policy_call(World::Launch, asked.elapsed().as_secs_f64());
    let mut plan = match answer {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            return Err(ServeOutcome::NotLaunched {
                reason: format!("the launch policy refused to launch: {e}"),
                refused: true,
            });
        }
        Err(e) => {
            return Err(ServeOutcome::NotLaunched {
                reason: format!("the launch policy failed: {e}"),
                refused: false,
            });
        }
    };
    add_serving_env(&mut plan, ctx.source);
    tracing::info!(
        env = %orchestrator_domain::secrets::secrets().show_env(&plan.env),
        "launching: {}",
        orchestrator_domain::secrets::shown(&plan.argv)
    );
    Ok(plan)
}

/// Adds the environment the serving process needs to join the cluster
/// (`RAY_ADDRESS`), unless the plan sets it.
pub fn add_serving_env(plan: &mut LaunchPlan, source: &dyn crate::membership::MembershipSource) {
    for kv in source.serving_env() {
        if !plan.env.iter().any(|e| e.key == kv.key) {
            plan.env.push(kv);
        }
    }
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
