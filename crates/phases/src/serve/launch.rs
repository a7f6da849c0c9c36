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
use std::time::{Duration, Instant};

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
        #[source]
        error: orchestrator_domain::RankMismatch,
    },
    /// `[serve.weights]` is not on every serving node.
    #[error("the model's weights are not on every serving node (serve.weights): {0}")]
    Weights(String),
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

/// This node's fetch of `[serve.weights]`, waited for up to `wait`: the
/// folder it fetched.
async fn own_weights(ctx: &ServeContext<'_>, wait: Duration) -> Result<std::path::PathBuf, NoPlan> {
    use orchestrator_weights::FetchState;
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        let progress = ctx.status.weights_progress();
        match progress.as_ref().map(|p| (p.state, p.path.clone())) {
            Some((FetchState::Done, Some(path))) => return Ok(path),
            Some((FetchState::Failed, _)) => {
                let why = progress.and_then(|p| p.error).unwrap_or_default();
                return Err(NoPlan::Weights(format!("this node's fetch failed: {why}")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NoPlan::Weights(format!(
                "this node's fetch is not complete after {} s (serve.weights.wait-seconds)",
                wait.as_secs()
            )));
        }
        if !said {
            tracing::info!("the launch waits for this node's weights (serve.weights)");
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(COPY_POLL) => {}
            () = ctx.shutdown.requested() => {
                return Err(NoPlan::Weights("stopped while the weights were fetched".into()));
            }
        }
    }
}

/// `[serve.compile-cache]`'s folders for vLLM, once this node's cache is
/// prepared (a pull from a peer waited for up to `wait`; past it, or
/// when the inputs could not be read, none: vLLM's default cache).
async fn compile_cache_env(ctx: &ServeContext<'_>, wait: Duration) -> Vec<KeyValue> {
    use crate::compile_cache::CacheState;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = ctx.status.compile_cache_view().unwrap_or_default();
        if view.state != CacheState::Preparing {
            return crate::compile_cache::launch_env(&view);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the compile cache is not prepared after {} s (serve.compile-cache.wait-seconds): vLLM uses its default cache",
                wait.as_secs()
            );
            return Vec::new();
        }
        tokio::select! {
            () = tokio::time::sleep(COPY_POLL) => {}
            () = ctx.shutdown.requested() => return Vec::new(),
        }
    }
}

/// Asks the launch policy for the plan; a refusal or a failure is the
/// outcome of the serve phase (nothing is started). With a local copy of
/// the model (`[serve.prefetch] copy-to`) and `use_local_copy`, the policy
/// is given the copy's path when every serving node's copy is complete
/// (else the shared path, saying why); copies still in progress are
/// waited for, up to the spec's `copy_wait`.
pub async fn plan_launch(
    ready: &Ready,
    spec: &ServeSpec,
    launch: &mut LaunchPolicy,
    ctx: ServeContext<'_>,
    use_local_copy: bool,
) -> Result<LaunchPlan, NoPlan> {
    let mut settings = spec.settings.clone();
    let copy = match spec.weights_wait {
        Some(wait) => Some((own_weights(&ctx, wait).await?, wait)),
        None => spec
            .local_copy
            .clone()
            .filter(|_| use_local_copy)
            .map(|to| (to, spec.copy_wait)),
    };
    if let Some((to, wait)) = copy {
        match wait_for_copies(ready, &to, wait, &ctx, spec.weights_wait.is_some()).await {
            Copies::Complete => {
                tracing::info!(
                    "serving the model from the local copies at {} (every serving node's copy is complete)",
                    to.display()
                );
                // Clients, and the warm-up and generation probes, keep
                // asking for the model by the name it was configured with.
                if settings.served_model_name.is_none() {
                    settings.served_model_name = Some(settings.model.clone());
                }
                settings.model = to.display().to_string();
            }
            Copies::InProgress(why) | Copies::Never(why) if spec.weights_wait.is_some() => {
                return Err(NoPlan::Weights(why));
            }
            Copies::InProgress(why) | Copies::Never(why) => {
                tracing::info!("serving the model from {}: {why}", settings.model);
            }
        }
    }
    let spec = ServeSpec {
        settings,
        ..spec.clone()
    };
    let compile_env = match spec.compile_cache_wait {
        Some(wait) => compile_cache_env(&ctx, wait).await,
        None => Vec::new(),
    };
    let mut plan = ask(
        launch,
        ready.snapshot.clone(),
        &spec,
        &ctx.source.serving_env(),
        Some(ctx.status),
    )?;
    // Every rank's server, wherever it runs, uses the same folders.
    for kv in compile_env {
        for env in std::iter::once(&mut plan.env).chain(plan.ranks.iter_mut().map(|r| &mut r.env)) {
            if !env.iter().any(|e| e.key == kv.key) {
                env.push(kv.clone());
            }
        }
    }
    tracing::info!(
        env = %orchestrator_domain::secrets::secrets().show_env(&plan.env),
        "launching: {}",
        orchestrator_domain::secrets::shown(&plan.argv)
    );
    Ok(plan)
}

/// Where the serving nodes' local copies stand.
#[derive(Debug, PartialEq)]
enum Copies {
    /// Every serving node's copy is complete.
    Complete,
    /// Some copy is still being made (or a node has not reported yet).
    InProgress(String),
    /// Some node will not have the copy (none made, none reported, no
    /// node health to confirm it).
    Never(String),
}

/// Waits up to `wait` while a copy is in progress (or a stop is asked);
/// `fetched`: the copies are `[serve.weights]`'s, which every node makes,
/// so a node that reports none yet is still at it.
async fn wait_for_copies(
    ready: &Ready,
    to: &Path,
    wait: Duration,
    ctx: &ServeContext<'_>,
    fetched: bool,
) -> Copies {
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        let copies = local_copies(ready, to, ctx, fetched);
        let Copies::InProgress(why) = &copies else {
            return copies;
        };
        if tokio::time::Instant::now() >= deadline {
            return copies;
        }
        if !said {
            tracing::info!(
                "waiting up to {} s for the local copies at {} before the launch: {why}",
                wait.as_secs(),
                to.display()
            );
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(COPY_POLL.min(deadline - tokio::time::Instant::now())) => {}
            () = ctx.shutdown.requested() => return copies,
        }
    }
}

/// How often the copies are looked at again while the launch waits.
const COPY_POLL: Duration = Duration::from_millis(100);

/// Whether every alive node of the ready cluster reported a complete copy
/// at `to` (through node health), and this node's own copy is complete.
fn local_copies(ready: &Ready, to: &Path, ctx: &ServeContext<'_>, fetched: bool) -> Copies {
    use crate::prefetch::PrefetchState;
    let path = to.display().to_string();
    let own = ctx.status.local_copy_progress();
    match own.as_ref() {
        Some(p) if p.copy_to.as_deref() == Some(to) && p.state == PrefetchState::Done => {}
        Some(p) if p.copy_to.as_deref() == Some(to) && p.state != PrefetchState::Failed => {
            return Copies::InProgress(format!(
                "this node's copy to {path} is not complete ({} of {} MiB)",
                p.bytes_done >> 20,
                p.bytes_total >> 20
            ));
        }
        _ => return Copies::Never(format!("this node has no complete copy at {path}")),
    }
    let alive: Vec<_> = ready.snapshot.nodes.iter().filter(|n| n.alive).collect();
    if alive.len() <= 1 {
        return Copies::Complete;
    }
    let Some(board) = ctx.health else {
        return Copies::Never(
            "node health is off, so the other nodes' copies cannot be confirmed ([node-health] enabled = true publishes them)".into(),
        );
    };
    let board = board.borrow().clone();
    for node in alive {
        let Some(entry) = board.entries.get(&node.id) else {
            return Copies::InProgress(format!("node {} has not reported yet", node.address));
        };
        match &entry.report.local_copy {
            Some(c) if c.path == path && c.complete => {}
            Some(c) if c.path == path => {
                return Copies::InProgress(format!(
                    "node {}'s copy is not complete ({} of {} MiB)",
                    node.address,
                    c.bytes_done >> 20,
                    c.bytes_total >> 20
                ));
            }
            None if fetched => {
                return Copies::InProgress(format!(
                    "node {} has not listed the revision yet",
                    node.address
                ));
            }
            _ => return Copies::Never(format!("node {} reports no copy at {path}", node.address)),
        }
    }
    Copies::Complete
}
