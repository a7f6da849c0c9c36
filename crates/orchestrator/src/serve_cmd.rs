//! The serve phase as `run` (head) and `local --model` use it: the launch
//! policy's plan, the supervised server, the health loop, while Ray's own
//! daemons stay watched.

use orchestrator_phases::ray_node::RayNode;
use orchestrator_phases::serve::{ServeOutcome, ServeSpec, serve};
use orchestrator_phases::signals::Shutdown;
use orchestrator_phases::status::Status;
use orchestrator_phases::wait::Ready;
use orchestrator_policy_host::Plugin;
use orchestrator_policy_host::types::{KeyValue, LaunchRequest, ServeSettings};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Everything the serve phase needs besides the policies.
pub struct ServeInputs {
    /// The serve settings.
    pub settings: ServeSettings,
    /// The launch policy's parameters.
    pub launch_params: Vec<KeyValue>,
    /// The health policy's parameters.
    pub health_params: Vec<KeyValue>,
    /// Where the probes reach the server.
    pub probe_address: String,
    /// The GCS to follow.
    pub gcs_address: String,
    /// Probe intervals and timeouts.
    pub health_interval: Duration,
    /// How often a generation probe runs.
    pub generation_interval: Duration,
    /// Timeout of a `/health` probe.
    pub health_timeout: Duration,
    /// Timeout of a generation probe.
    pub generation_timeout: Duration,
    /// Server drain time.
    pub stop_grace: Duration,
}

/// Plans the launch, serves, and returns the process's exit code. Ray's
/// daemons on this machine (`nodes`) are watched too: if one dies the server
/// is stopped and the run fails.
pub async fn launch_and_serve(
    ready: &Ready,
    inputs: ServeInputs,
    launch: &mut Plugin,
    health: &mut Plugin,
    status: &Status,
    shutdown: &Shutdown,
    nodes: &[RayNode],
) -> ExitCode {
    let request = LaunchRequest {
        cluster: ready.snapshot.clone(),
        settings: inputs.settings.clone(),
    };
    let started = Instant::now();
    let plan = launch.plan(&request, &inputs.launch_params);
    status.policy_call("launch", started.elapsed().as_secs_f64());
    let mut plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            eprintln!("error: the launch policy refused to launch: {e}");
            status.fail(
                "LaunchRefused",
                format!("the launch policy refused to launch: {e}"),
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: the launch policy failed: {e}");
            status.fail("PolicyFailed", format!("the launch policy failed: {e}"));
            return ExitCode::from(1);
        }
    };
    // vLLM's driver joins this cluster, not whatever `ray.init("auto")`
    // would find in /tmp/ray.
    if !plan.env.iter().any(|kv| kv.key == "RAY_ADDRESS") {
        plan.env
            .push(KeyValue::new("RAY_ADDRESS", inputs.gcs_address.clone()));
    }
    tracing::info!(
        env = %plan.env.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect::<Vec<_>>().join(" "),
        "launching: {}",
        plan.argv.join(" ")
    );
    let spec = ServeSpec {
        plan,
        probe_address: inputs.probe_address,
        model: inputs
            .settings
            .served_model_name
            .clone()
            .unwrap_or_else(|| inputs.settings.model.clone()),
        health_interval: inputs.health_interval,
        generation_interval: inputs.generation_interval,
        health_timeout: inputs.health_timeout,
        generation_timeout: inputs.generation_timeout,
        stop_grace: inputs.stop_grace,
        gcs_address: inputs.gcs_address,
        params: inputs.health_params,
        nodes: ready.snapshot.nodes.clone(),
        ready_at: Some(ready.decided_at),
    };
    status.enter("serve");
    let ray_death = async {
        let mut waits: Vec<_> = nodes
            .iter()
            .map(|n| Box::pin(async move { (n.label().to_string(), n.exited().await) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        std::future::poll_fn(move |cx| {
            for w in waits.iter_mut() {
                if let std::task::Poll::Ready(v) = w.as_mut().poll(cx) {
                    return std::task::Poll::Ready(v);
                }
            }
            std::task::Poll::Pending
        })
        .await
    };
    tokio::select! {
        outcome = serve(&spec, health, status, shutdown) => match outcome {
            ServeOutcome::Stopped => ExitCode::SUCCESS,
            ServeOutcome::Shutdown { exit_code, reason } => {
                eprintln!("error: the health policy shut the service down: {reason}");
                ExitCode::from(u8::try_from(exit_code).unwrap_or(1))
            }
        },
        (label, daemon) = ray_death => {
            let message = format!("Ray's {daemon} on node {label} while serving; stopping");
            eprintln!("error: {message}");
            status.fail("RayExited", message);
            ExitCode::from(1)
        }
    }
}
