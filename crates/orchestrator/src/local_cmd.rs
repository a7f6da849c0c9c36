//! `orchestrator local --workers N`: a head and N workers on this machine
//! (127.0.0.2, 127.0.0.3, ...), the wait phase with the readiness policy,
//! then supervision until Ctrl-C or SIGTERM, which stops everything started.

use crate::host;
use crate::serve_cmd::{ServeInputs, launch_and_serve};
use anyhow::{Context, Result, bail};
use clap::Args;
use orchestrator_phases::config::PluginLimits;
use orchestrator_phases::limits::raise_nofile;
use orchestrator_phases::ray_node::RayNode;
use orchestrator_phases::ray_start::RayStart;
use orchestrator_phases::signals::Shutdown;
use orchestrator_phases::status::{Status, serve_endpoints};
use orchestrator_phases::wait::{WaitSpec, wait_for_cluster};
use orchestrator_policy_host::types::{KeyValue, ServeSettings, Topology};
use orchestrator_policy_host::{PluginSource, World};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Start a local Ray cluster and run the wait phase on it.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Worker nodes besides the head.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Ray's `ray` executable.
    #[arg(long, env = "ORCHESTRATOR_RAY_BIN", default_value = "ray")]
    pub ray_bin: PathBuf,
    /// The head's address; workers take the next ones (127.0.0.1 is not
    /// allowed: Ray rewrites it to the host's network address).
    #[arg(long, default_value = "127.0.0.2")]
    pub head_ip: Ipv4Addr,
    /// The GCS port.
    #[arg(long, default_value_t = 6379)]
    pub gcs_port: u16,
    /// First dashboard-agent port; node i uses this + i.
    #[arg(long, default_value_t = 52365)]
    pub agent_port: u16,
    /// First metrics-export port; node i uses this + i (outside Ray's worker port range 10002-19999).
    #[arg(long, default_value_t = 28080)]
    pub metrics_port: u16,
    /// CPUs each node offers.
    #[arg(long, default_value_t = 1.0)]
    pub cpus_per_node: f64,
    /// GPUs (slots) each node offers.
    #[arg(long, default_value_t = 0.0)]
    pub gpus_per_node: f64,
    /// Memory each node offers to tasks, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u64,
    /// Object-store memory of each node, MiB.
    #[arg(long, default_value_t = 128)]
    pub object_store_mib: u64,
    /// Ray's temp dir (default: /tmp/ray-local-<gcs port>).
    #[arg(long)]
    pub temp_dir: Option<PathBuf>,
    /// Seconds the cluster may take to form.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Seconds Ray's processes get after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 5)]
    pub grace: u64,
    /// Seconds to hold back each worker's start (to show the wait).
    #[arg(long, default_value_t = 0.0)]
    pub worker_delay: f64,
    /// The readiness policy: a component file or builtin:NAME.
    #[arg(long, default_value = "builtin:node-count")]
    pub policy: String,
    /// A policy parameter, KEY=VALUE.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Stop everything as soon as the cluster is ready (for scripts).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Serve this model with vLLM once the cluster is ready (a path or name).
    #[arg(long)]
    pub model: Option<String>,
    /// The name the API serves the model under.
    #[arg(long, default_value = "tiny")]
    pub served_model_name: String,
    /// Tensor-parallel size (default: from the cluster's GPUs).
    #[arg(long)]
    pub tp: Option<u32>,
    /// Pipeline-parallel size (default: from the cluster's GPUs).
    #[arg(long)]
    pub pp: Option<u32>,
    /// The port vLLM serves on (bound on the head's address).
    #[arg(long, default_value_t = 8000)]
    pub serve_port: u16,
    /// The `vllm` executable.
    #[arg(long, env = "ORCHESTRATOR_VLLM_BIN", default_value = "vllm")]
    pub vllm_bin: String,
    /// An extra `vllm serve` argument; repeat for more.
    #[arg(long = "vllm-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub vllm_args: Vec<String>,
    /// An environment variable for vLLM, KEY=VALUE; repeat for more.
    #[arg(long = "vllm-env", value_name = "KEY=VALUE")]
    pub vllm_env: Vec<String>,
    /// The launch policy: a component file or builtin:NAME.
    #[arg(long, default_value = "builtin:vllm")]
    pub launch_policy: String,
    /// The health policy: a component file or builtin:NAME.
    #[arg(long, default_value = "builtin:default")]
    pub health_policy: String,
    /// A health policy parameter, KEY=VALUE.
    #[arg(long = "health-param", value_name = "KEY=VALUE")]
    pub health_params: Vec<String>,
    /// Health probe interval, ms.
    #[arg(long, default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// Generation probe interval, ms.
    #[arg(long, default_value_t = 10_000)]
    pub generation_interval_ms: u64,
    /// An environment variable for Ray's processes, KEY=VALUE; repeat for more.
    #[arg(long = "ray-env", value_name = "KEY=VALUE")]
    pub ray_env: Vec<String>,
    /// Port of /livez, /readyz, /status, /metrics (0: off).
    #[arg(long, default_value_t = orchestrator_phases::status::DEFAULT_PORT)]
    pub endpoints_port: u16,
}

fn key_values(raw: &[String], flag: &str) -> Result<Vec<KeyValue>> {
    raw.iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("{flag} {p:?} is not KEY=VALUE"))?;
            Ok(KeyValue::new(k, v))
        })
        .collect()
}

fn node_argv(
    args: &LocalArgs,
    index: u32,
    temp_dir: &std::path::Path,
) -> Result<(String, Vec<String>)> {
    let ip = u32::from(args.head_ip)
        .checked_add(index)
        .map(Ipv4Addr::from)
        .context("node address overflows")?;
    if ip.octets()[0] != 127 || ip == Ipv4Addr::new(127, 0, 0, 1) {
        bail!("node {index} would get address {ip}; use --head-ip in 127.0.0.2 and up");
    }
    let offset = u16::try_from(index).context("too many workers")?;
    let mut cmd = RayStart {
        program: args.ray_bin.clone(),
        args: vec![],
    };
    let head = index == 0;
    if head {
        cmd.flag("head");
        cmd.set("port", args.gcs_port.to_string());
        cmd.set("temp-dir", temp_dir.display().to_string());
    } else {
        cmd.set("address", format!("{}:{}", args.head_ip, args.gcs_port));
    }
    cmd.set("node-ip-address", ip.to_string());
    cmd.set("num-cpus", args.cpus_per_node.to_string());
    cmd.set("num-gpus", args.gpus_per_node.to_string());
    cmd.set("memory", (args.memory_mib * 1024 * 1024).to_string());
    cmd.set(
        "object-store-memory",
        (args.object_store_mib * 1024 * 1024).to_string(),
    );
    cmd.set(
        "dashboard-agent-listen-port",
        (args.agent_port + offset).to_string(),
    );
    cmd.set(
        "metrics-export-port",
        (args.metrics_port + offset).to_string(),
    );
    cmd.flag("disable-usage-stats");
    let label = if head {
        "head".to_string()
    } else {
        format!("worker-{index}")
    };
    Ok((label, cmd.argv()))
}

/// Environment for local Ray processes: faster death detection by the GCS
/// (a killed node is marked dead in ~2 s instead of ~30 s), no usage stats.
pub fn local_ray_env() -> Vec<(String, String)> {
    [
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_health_check_initial_delay_ms", "1000"),
        ("RAY_health_check_period_ms", "500"),
        ("RAY_health_check_timeout_ms", "500"),
        ("RAY_health_check_failure_threshold", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs the command.
pub fn run(args: LocalArgs) -> ExitCode {
    crate::run_async(local(args))
}

async fn local(args: LocalArgs) -> Result<ExitCode> {
    let params = key_values(&args.params, "--param")?;
    let health_params = key_values(&args.health_params, "--health-param")?;
    let mut launch_params = vec![
        KeyValue::new("program", &args.vllm_bin),
        KeyValue::new("env.VLLM_HOST_IP", args.head_ip.to_string()),
    ];
    for kv in key_values(&args.vllm_env, "--vllm-env")? {
        launch_params.push(KeyValue::new(format!("env.{}", kv.key), kv.value));
    }
    let host = host::host(&PluginLimits::default())?;
    let mut policy = host::load(&host, World::Readiness, &PluginSource::parse(&args.policy))?;
    let mut serve_policies = match &args.model {
        Some(_) => Some((
            host::load(
                &host,
                World::Launch,
                &PluginSource::parse(&args.launch_policy),
            )?,
            host::load(
                &host,
                World::Health,
                &PluginSource::parse(&args.health_policy),
            )?,
        )),
        None => None,
    };
    let status = Status::new();
    if args.endpoints_port != 0 {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], args.endpoints_port));
        serve_endpoints(address, std::sync::Arc::clone(&status))
            .await
            .with_context(|| {
                format!("cannot serve the endpoints on {address}: use --endpoints-port")
            })?;
    }
    let nofile = raise_nofile(65536);
    if let Some(why) = &nofile.short_of {
        tracing::warn!(
            limit = nofile.now,
            "open-file limit raised only to {}: {why}",
            nofile.now
        );
    }
    let temp_dir = args
        .temp_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/ray-local-{}", args.gcs_port)));
    let mut env = local_ray_env();
    for kv in key_values(&args.ray_env, "--ray-env")? {
        env.push((kv.key, kv.value));
    }
    let grace = Duration::from_secs(args.grace);
    let shutdown = Shutdown::install()?;
    if let Err(e) = orchestrator_phases::reaper::spawn_reaper() {
        tracing::warn!("cannot reap orphans ({e})");
    }
    if let Err(e) = orchestrator_phases::ray_node::become_subreaper() {
        tracing::warn!(
            "cannot become the subreaper of Ray's processes ({e}); PID 1 will reap them"
        );
    }
    let start = Instant::now();

    let mut nodes: Vec<RayNode> = Vec::new();
    // Workers on one host must start one at a time: concurrent `ray start`s
    // pick the same socket names and ports in the shared temp dir.
    let (node_tx, mut node_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut starter: Option<tokio::task::JoinHandle<()>> = None;
    let outcome = async {
        let (label, argv) = node_argv(&args, 0, &temp_dir)?;
        tracing::info!(node = %label, "starting: {}", argv.join(" "));
        // Not cancelled by a signal: a half-started node must be stopped,
        // which needs its process group.
        nodes.push(RayNode::start(&label, &argv, &env, Duration::from_secs(120)).await?);
        if shutdown.is_requested() {
            return Ok(None);
        }

        let mut worker_argvs = Vec::new();
        for index in 1..=args.workers {
            worker_argvs.push(node_argv(&args, index, &temp_dir)?);
        }
        let env = env.clone();
        let delay = Duration::from_secs_f64(args.worker_delay.max(0.0));
        starter = Some(tokio::spawn(async move {
            for (label, argv) in worker_argvs {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => return,
                }
                tracing::info!(node = %label, "starting: {}", argv.join(" "));
                let started = RayNode::start(&label, &argv, &env, Duration::from_secs(120)).await;
                let failed = started.is_err();
                if node_tx.send(started).is_err() || failed {
                    return;
                }
            }
        }));

        let spec = WaitSpec {
            address: format!("{}:{}", args.head_ip, args.gcs_port),
            expected: Topology {
                nodes: args.workers + 1,
                gpus: args.gpus_per_node * f64::from(args.workers + 1),
                min_gpus_per_node: 0.0,
                groups: vec![],
            },
            timeout: Duration::from_secs(args.timeout),
            params: params.clone(),
            diagnostics: vec![],
            facts: None,
            status: Some(std::sync::Arc::clone(&status)),
        };
        status.enter("wait");
        let wait = wait_for_cluster(&spec, &mut policy);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                ready = &mut wait => return Ok(Some(ready?)),
                () = shutdown.requested() => return Ok(None),
                Some(started) = node_rx.recv() => match started {
                    Ok(node) => nodes.push(node),
                    Err(e) => return Err(anyhow::Error::from(e).context("a worker failed to start")),
                },
            }
        }
    }
    .await;
    let code = match outcome {
        Ok(Some(ready)) => {
            println!(
                "cluster ready after {:.1} s: {} nodes",
                start.elapsed().as_secs_f64(),
                ready.snapshot.nodes.iter().filter(|n| n.alive).count()
            );
            for n in ready.snapshot.nodes.iter().filter(|n| n.alive) {
                println!(
                    "  {:<6} {:<12} node {}  cpu={} gpu={}",
                    if n.is_head { "head" } else { "worker" },
                    n.address,
                    n.id.get(..12).unwrap_or(&n.id),
                    n.resources.cpu,
                    n.resources.gpu
                );
            }
            status.nodes(
                ready.snapshot.nodes.iter().filter(|n| n.alive).count() as u32,
                args.workers + 1,
            );
            if let (Some(model), Some((launch, health))) = (&args.model, serve_policies.as_mut()) {
                let inputs = ServeInputs {
                    settings: ServeSettings {
                        model: model.clone(),
                        served_model_name: Some(args.served_model_name.clone()),
                        host: args.head_ip.to_string(),
                        port: args.serve_port,
                        extra_args: args.vllm_args.clone(),
                        tensor_parallel_size: args.tp,
                        pipeline_parallel_size: args.pp,
                    },
                    launch_params: launch_params.clone(),
                    health_params: health_params.clone(),
                    probe_address: format!("{}:{}", args.head_ip, args.serve_port),
                    gcs_address: format!("{}:{}", args.head_ip, args.gcs_port),
                    health_interval: Duration::from_millis(args.health_interval_ms.max(10)),
                    generation_interval: Duration::from_millis(args.generation_interval_ms.max(10)),
                    health_timeout: Duration::from_secs(5),
                    generation_timeout: Duration::from_secs(60),
                    stop_grace: Duration::from_secs(30),
                };
                println!(
                    "serving {model} on http://{}:{} (Ctrl-C stops everything)",
                    args.head_ip, args.serve_port
                );
                // A worker's death reaches the health policy through the
                // GCS, as it would from another pod; only the head's daemons
                // are watched here.
                launch_and_serve(
                    &ready,
                    inputs,
                    launch,
                    health,
                    &status,
                    &shutdown,
                    &nodes[..1.min(nodes.len())],
                )
                .await
            } else if args.exit_when_ready {
                ExitCode::SUCCESS
            } else {
                println!("press Ctrl-C to stop the cluster");
                supervise(&nodes, &shutdown).await
            }
        }
        Ok(None) => {
            tracing::info!("stop requested during start-up");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    };
    // Let a worker start still in progress finish (it is not cut off
    // half-way), then collect every node started, to stop them all.
    let _ = stop_tx.send(true);
    if let Some(starter) = starter {
        let _ = starter.await;
    }
    while let Ok(started) = node_rx.try_recv() {
        if let Ok(node) = started {
            nodes.push(node);
        }
    }

    let mut all_stopped = true;
    for node in nodes.iter().rev() {
        all_stopped &= node.stop(grace).await;
    }
    if !all_stopped {
        eprintln!("error: some Ray processes did not stop; see the log above");
        return Ok(ExitCode::from(1));
    }
    tracing::info!("all Ray processes stopped");
    Ok(code)
}

/// Waits for a stop request or a node's death.
async fn supervise(nodes: &[RayNode], shutdown: &Shutdown) -> ExitCode {
    let deaths = nodes
        .iter()
        .map(|n| Box::pin(async move { (n.label().to_string(), n.exited().await) }));
    let any_death = async {
        let mut deaths: Vec<_> = deaths.collect();
        std::future::poll_fn(move |cx| {
            for d in deaths.iter_mut() {
                if let std::task::Poll::Ready(v) = d.as_mut().poll(cx) {
                    return std::task::Poll::Ready(v);
                }
            }
            std::task::Poll::Pending
        })
        .await
    };
    tokio::select! {
        () = shutdown.requested() => ExitCode::SUCCESS,
        (label, daemon) = any_death => {
            eprintln!("error: {daemon} on node {label}; stopping the cluster");
            ExitCode::from(1)
        }
    }
}
