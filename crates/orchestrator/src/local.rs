//! `orchestrator local --workers N`: a head and N workers on this machine
//! (127.0.0.2, 127.0.0.3, ...), the wait phase with the readiness policy,
//! then serving or supervision until Ctrl-C or SIGTERM, which stops
//! everything started. Arguments in, the library's local plan and
//! lifecycle, the cluster printed once ready.

use anyhow::{Context, Result};
use clap::Args;
use orchestrator_domain::KeyValue;
use orchestrator_phases::config::{OriginKind, WeightsConfig};
use orchestrator_phases::config::{PluginLimits, PreflightConfig, PreflightMode, ServeConfig};
use orchestrator_phases::lifecycle::{Lifecycle, LocalCluster, Plan};
use orchestrator_phases::native::{LocalGroup, NativeBackend, NativePlan};
use orchestrator_phases::policies::{self, Named, Policies};
use orchestrator_phases::prefetch::PrefetchConfig;
use orchestrator_phases::scale::ScaleSpec;
use orchestrator_phases::serve::ServeSpec;
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
    /// `ray` (a Ray head and workers) or `native` (vLLM's own multi-node
    /// mode: a leader and `--workers` ranks, no Ray).
    #[arg(long, value_enum, default_value = "ray")]
    pub backend: LocalBackend,
    /// Native backend: how often each rank sends its heartbeat, ms.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// Native backend: after how long without a heartbeat a rank is lost, ms.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_timeout_ms: u64,
    /// How `oci://` policies are pulled.
    #[command(flatten)]
    pub registry: crate::plugin::RegistryArgs,
    /// On SIGTERM: how long requests in flight may take to finish (vLLM's
    /// running and waiting counts) before vLLM is stopped; 0: at once.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_seconds: u64,
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
    /// Read these files or directories (the model's weights) into the
    /// page cache while the cluster forms (repeatable).
    #[arg(long, value_name = "PATH")]
    pub prefetch: Vec<std::path::PathBuf>,
    /// Copy the one `--prefetch` directory here while the cluster forms;
    /// vLLM then loads the model from the copy (when `--model` names that
    /// directory and every node's copy is complete).
    #[arg(long, value_name = "DIR", requires = "prefetch")]
    pub prefetch_copy_to: Option<std::path::PathBuf>,
    /// Fetch the model from this origin before the launch and serve it
    /// from the cache (`[serve.weights]`): a hub mirror's base URL (with
    /// `--weights-repo`) or a plain HTTP directory.
    #[arg(long, value_name = "URL")]
    pub weights_url: Option<String>,
    /// The hub repository (`org/name`) at `--weights-url`; without it the
    /// URL is a plain directory.
    #[arg(long, value_name = "ORG/NAME", requires = "weights_url")]
    pub weights_repo: Option<String>,
    /// The revision (hub: branch, tag or commit; directory: its name).
    #[arg(long, requires = "weights_url")]
    pub weights_revision: Option<String>,
    /// The weights' cache (default: orchestrator-weights in the temp dir).
    #[arg(long, value_name = "DIR", requires = "weights_url")]
    pub weights_cache_dir: Option<std::path::PathBuf>,
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
    /// A launch-policy parameter KEY=VALUE (repeatable), e.g.
    /// `early-launch=false` to start vLLM only once the cluster is ready (the
    /// built-in starts it while the workers join).
    #[arg(long = "launch-param", value_name = "KEY=VALUE")]
    pub launch_params: Vec<String>,
    /// The node-health policy every node checks itself with: a component
    /// file or builtin:NAME.
    #[arg(long, default_value = "builtin:default")]
    pub node_health_policy: String,
    /// A health policy parameter, KEY=VALUE.
    #[arg(long = "health-param", value_name = "KEY=VALUE")]
    pub health_params: Vec<String>,
    /// A start stage's deadline, STAGE=SECONDS (repeatable), e.g.
    /// `distributed-init=120`: past it the rank is stalled and its stacks
    /// are taken (`[serve.stage-deadlines]`).
    #[arg(long = "stage-deadline", value_name = "STAGE=SECONDS")]
    pub stage_deadlines: Vec<String>,
    /// The py-spy that takes a stalled rank's stacks (default: beside
    /// the vllm program, else on the PATH).
    #[arg(long)]
    pub py_spy: Option<std::path::PathBuf>,
    /// Where a stall's stacks are written.
    #[arg(long)]
    pub stacks_dir: Option<std::path::PathBuf>,
    /// The gang preflight before the server starts: off, warn or required
    /// (`[serve.preflight] mode`).
    #[arg(long, value_enum, default_value = "off")]
    pub preflight: LocalPreflight,
    /// The Python with torch that runs the preflight (default: beside the
    /// vllm program, else python3).
    #[arg(long)]
    pub preflight_python: Option<std::path::PathBuf>,
    /// How long every rank may take to join the preflight, seconds.
    #[arg(long, default_value_t = 60)]
    pub preflight_timeout_seconds: u64,
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
    #[arg(long, default_value_t = orchestrator_phases::endpoints::DEFAULT_PORT)]
    pub endpoints_port: u16,
    /// Recommend serving replicas from vLLM's load while serving
    /// (`/status` scale, `orchestrator_desired_replicas`).
    #[arg(long)]
    pub scale: bool,
    /// The scale policy: a component file or builtin:NAME.
    #[arg(long, default_value = "builtin:default")]
    pub scale_policy: String,
    /// A scale policy parameter KEY=VALUE (repeatable), e.g.
    /// `target-requests-per-replica=4`.
    #[arg(long = "scale-param", value_name = "KEY=VALUE")]
    pub scale_params: Vec<String>,
    /// How often the load is sampled, ms.
    #[arg(long, default_value_t = 5000)]
    pub scale_interval_ms: u64,
    /// The load history the scale policy sees, seconds.
    #[arg(long, default_value_t = 60)]
    pub scale_window_seconds: u64,
    /// The most replicas a recommendation may name.
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u32,
}

/// `--preflight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalPreflight {
    /// No preflight.
    Off,
    /// A failed preflight is shown; the server starts anyway.
    Warn,
    /// A failed preflight stops the run (exit 1) before the server starts.
    Required,
}

/// The backend of a local cluster.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalBackend {
    /// Ray.
    Ray,
    /// vLLM's own multi-node mode.
    Native,
}

/// `KEY=VALUE` flags as pairs.
pub fn key_values(raw: &[String], flag: &str) -> Result<Vec<KeyValue>> {
    raw.iter()
        .map(|p| KeyValue::parse(p).with_context(|| format!("{flag} {p:?} is not KEY=VALUE")))
        .collect()
}

impl LocalArgs {
    /// The serve phase's spec, when a model is given: the configuration's
    /// `[serve]` table with these flags set, built as `run` builds it.
    fn serve_spec(&self) -> Result<Option<ServeSpec>> {
        let weights = self.weights()?;
        if self.model.is_none() && !weights.enabled() {
            return Ok(None);
        }
        let serve = ServeConfig {
            model: self.model.clone(),
            weights,
            served_model_name: Some(self.served_model_name.clone()),
            host: self.head_ip.to_string(),
            port: self.serve_port,
            extra_args: self.vllm_args.clone(),
            tensor_parallel_size: self.tp,
            pipeline_parallel_size: self.pp,
            health_interval_ms: self.health_interval_ms,
            generation_interval_ms: self.generation_interval_ms,
            drain_timeout_seconds: self.drain_timeout_seconds,
            prefetch: self.prefetch(),
            preflight: PreflightConfig {
                mode: match self.preflight {
                    LocalPreflight::Off => PreflightMode::Off,
                    LocalPreflight::Warn => PreflightMode::Warn,
                    LocalPreflight::Required => PreflightMode::Required,
                },
                timeout_seconds: self.preflight_timeout_seconds.clamp(1, 3600),
                python: self.preflight_python.clone(),
                ..PreflightConfig::default()
            },
            ..ServeConfig::default()
        };
        let mut spec = ServeSpec::from_config(&serve, &Default::default());
        for kv in key_values(&self.stage_deadlines, "--stage-deadline")? {
            let seconds = kv
                .value
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=7 * 24 * 3600).contains(s))
                .with_context(|| {
                    format!(
                        "--stage-deadline {}={}: the deadline is whole seconds, 1 to 604800",
                        kv.key, kv.value
                    )
                })?;
            spec.stall
                .deadlines
                .set(&kv.key, seconds)
                .map_err(|e| anyhow::anyhow!("--stage-deadline: {e}"))?;
        }
        if let Some(py_spy) = &self.py_spy {
            spec.stall.py_spy = Some(py_spy.clone());
        }
        if let Some(dir) = &self.stacks_dir {
            spec.stall.stacks_dir = dir.clone();
        }
        spec.launch_params = vec![
            KeyValue::new("program", &self.vllm_bin),
            KeyValue::new("env.VLLM_HOST_IP", self.head_ip.to_string()),
        ];
        for kv in key_values(&self.vllm_env, "--vllm-env")? {
            spec.launch_params
                .push(KeyValue::new(format!("env.{}", kv.key), kv.value));
        }
        spec.launch_params
            .extend(key_values(&self.launch_params, "--launch-param")?);
        spec.health_params = key_values(&self.health_params, "--health-param")?;
        let scale_params = key_values(&self.scale_params, "--scale-param")?;
        spec.scale = self.scale.then(|| ScaleSpec {
            interval: Duration::from_millis(self.scale_interval_ms.max(10)),
            window: Duration::from_secs(self.scale_window_seconds.max(1)),
            min_replicas: 1,
            max_replicas: self.max_replicas.max(1),
            current_replicas: 1,
            params: scale_params,
        });
        Ok(Some(spec))
    }

    /// What `--prefetch` and `--prefetch-copy-to` ask for.
    /// `[serve.weights]` from the `--weights-*` flags (off without a URL).
    fn weights(&self) -> Result<WeightsConfig> {
        let Some(url) = &self.weights_url else {
            return Ok(WeightsConfig::default());
        };
        let weights = WeightsConfig {
            origin: Some(if self.weights_repo.is_some() {
                OriginKind::Hub
            } else {
                OriginKind::Directory
            }),
            url: url.clone(),
            repo: self.weights_repo.clone(),
            revision: self.weights_revision.clone(),
            cache_dir: self
                .weights_cache_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("orchestrator-weights")),
            ..WeightsConfig::default()
        };
        weights
            .check()
            .map_err(|e| anyhow::anyhow!("--weights-url: {e}"))?;
        Ok(weights)
    }

    fn prefetch(&self) -> PrefetchConfig {
        PrefetchConfig {
            paths: self.prefetch.clone(),
            max_mb_per_second: 0,
            copy_to: self.prefetch_copy_to.clone(),
            ..PrefetchConfig::default()
        }
    }

    /// The library's description of this local cluster.
    fn cluster(&self) -> Result<LocalCluster> {
        Ok(LocalCluster {
            workers: self.workers,
            ray_bin: self.ray_bin.clone(),
            head_ip: self.head_ip,
            gcs_port: self.gcs_port,
            agent_port: self.agent_port,
            metrics_port: self.metrics_port,
            cpus_per_node: self.cpus_per_node,
            gpus_per_node: self.gpus_per_node,
            memory_mib: self.memory_mib,
            object_store_mib: self.object_store_mib,
            temp_dir: self.temp_dir.clone(),
            timeout: Duration::from_secs(self.timeout),
            grace: Duration::from_secs(self.grace),
            worker_delay: Duration::from_secs_f64(self.worker_delay.max(0.0)),
            ray_env: key_values(&self.ray_env, "--ray-env")?,
            readiness_params: key_values(&self.params, "--param")?,
            serve: self.serve_spec()?,
            exit_when_ready: self.exit_when_ready,
            endpoints_port: self.endpoints_port,
            prefetch: {
                let prefetch = self.prefetch();
                prefetch
                    .check()
                    .map_err(|e| anyhow::anyhow!("--prefetch-copy-to: {e}"))?;
                prefetch
            },
            weights: self.weights()?,
        })
    }

    /// The node-health policy.
    fn node_health_policy(&self) -> Result<orchestrator_policy_host::NodeHealthPolicy> {
        let host = policies::host(&PluginLimits::default())?;
        Ok(policies::node_health(
            &host,
            &self.registry.policy(&self.node_health_policy)?,
            "--node-health-policy",
        )?)
    }

    /// The policies: readiness always, launch and health to serve a model.
    fn policies(&self) -> Result<Policies> {
        let host = policies::host(&PluginLimits::default())?;
        let named = |flag, text: &str| -> Result<Named> {
            let policy = self.registry.policy(text).with_context(|| flag)?;
            Ok(Named { policy, flag })
        };
        let scale = match self.scale {
            true => Some(named("--scale-policy", &self.scale_policy)?),
            false => None,
        };
        Ok(Policies::of_named(
            &host,
            named("--policy", &self.policy)?,
            named("--launch-policy", &self.launch_policy)?,
            named("--health-policy", &self.health_policy)?,
            scale,
        )?)
    }
}

/// Runs the command: 0 after Ctrl-C/SIGTERM or `--exit-when-ready`, 1 for
/// a failure, 2 for bad arguments.
pub fn run(args: LocalArgs) -> ExitCode {
    let prepared = match args.backend {
        LocalBackend::Native => args.cluster().and_then(|cluster| {
            let group = LocalGroup::of_cluster(
                cluster,
                Duration::from_millis(args.heartbeat_ms.max(10)),
                Duration::from_millis(args.heartbeat_timeout_ms.max(2 * args.heartbeat_ms)),
            );
            let plan = NativePlan::local(&group)?;
            Ok(
                Lifecycle::of(NativeBackend::new(plan, Some(args.policies()?)))
                    .with_node_health_policy(args.node_health_policy()?),
            )
        }),
        LocalBackend::Ray => args.cluster().and_then(|cluster| {
            Ok(
                Lifecycle::new(Plan::local(&cluster)?, Some(args.policies()?))
                    .with_node_health_policy(args.node_health_policy()?),
            )
        }),
    };
    let lifecycle = match prepared {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let (LocalBackend::Native, Some(model)) = (args.backend, &args.model) {
        println!(
            "native backend: a leader and {} rank(s); serving {model} on http://{}:{} once every rank is present (Ctrl-C stops everything)",
            args.workers, args.head_ip, args.serve_port
        );
    }
    let start = Instant::now();
    let (model, address) = (
        args.model.clone(),
        format!("http://{}:{}", args.head_ip, args.serve_port),
    );
    let exit_when_ready = args.exit_when_ready;
    let lifecycle = lifecycle.on_ready(move |ready| {
        println!(
            "cluster ready after {:.1} s: {} nodes\n{}",
            start.elapsed().as_secs_f64(),
            ready.alive().count(),
            ready.node_lines().trim_end()
        );
        match model {
            Some(model) => println!("serving {model} on {address} (Ctrl-C stops everything)"),
            None if !exit_when_ready => println!("press Ctrl-C to stop the cluster"),
            None => {}
        }
    });
    let status = lifecycle.status();
    let code = crate::run_lifecycle(lifecycle);
    println!("startup timeline:\n{}", status.timeline_table());
    code
}
