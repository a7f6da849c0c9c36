//! Turning the ready cluster into the serving process's command: the
//! launch policy's plan, plus what the membership source needs the
//! server to know (Ray: `RAY_ADDRESS`).

use super::{ServeContext, ServeOutcome, ServeSpec};
use crate::wait::Ready;
use orchestrator_domain::{LaunchPlan, LaunchRequest};
use orchestrator_policy_host::{LaunchPolicy, World};
use std::time::Instant;

/// Asks the launch policy for the plan; a refusal or a failure is the
/// outcome of the serve phase (nothing is started).
pub fn plan_launch(
    ready: &Ready,
    spec: &ServeSpec,
    launch: &mut LaunchPolicy,
    ctx: ServeContext<'_>,
) -> Result<LaunchPlan, ServeOutcome> {
    let request = LaunchRequest {
        cluster: ready.snapshot.clone(),
        settings: spec.settings.clone(),
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
        env = %plan.env.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect::<Vec<_>>().join(" "),
        "launching: {}",
        plan.argv.join(" ")
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
