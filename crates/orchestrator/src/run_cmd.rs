//! `orchestrator run` (this pod's role from a configuration) and
//! `orchestrator plan` (what `run` would do, without running anything).

use crate::host;
use crate::serve_cmd::{ServeInputs, launch_and_serve};
use anyhow::{Context, Result};
use clap::Args;
use orchestrator_phases::config::{Config, Role};
use orchestrator_phases::limits::raise_nofile;
use orchestrator_phases::ray_node::{RayNode, become_subreaper};
use orchestrator_phases::ray_start::{KUBERAY_ENV, RayStart};
use orchestrator_phases::reaper::spawn_reaper;
use orchestrator_phases::signals::Shutdown;
use orchestrator_phases::status::{Status, serve_endpoints};
use orchestrator_phases::wait::{WaitSpec, wait_for_cluster};
use orchestrator_policy_host::World;
use orchestrator_policy_host::types::{ClusterSnapshot, LaunchRequest, Node, Resources, Topology};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Where the configuration comes from.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any field by its dotted path, e.g. --set ray.num-cpus=4 (repeatable;
    /// ORCHESTRATOR__RAY__NUM_CPUS=4 does the same from the environment).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// This pod's role; overrides `role` in the file.
    #[arg(long, value_parser = ["head", "worker"])]
    pub role: Option<String>,
}

impl ConfigArgs {
    /// Loads and checks the configuration.
    pub fn load(&self) -> Result<Config, orchestrator_phases::config::ConfigError> {
        let mut sets = Vec::new();
        if let Some(role) = &self.role {
            sets.push(format!("role=\"{role}\""));
        }
        sets.extend(self.sets.iter().cloned());
        Config::load(self.config.as_deref(), std::env::vars(), &sets)
    }
}

/// The head's GCS address: configured, or this node's IP and the GCS port.
fn head_gcs_address(config: &Config) -> String {
    config.ray.gcs_address.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            config.ray.node_ip.as_deref().unwrap_or("127.0.0.1"),
            config.ray.gcs_port
        )
    })
}

fn load_config(args: &ConfigArgs) -> Result<Config, ExitCode> {
    args.load().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `orchestrator plan` arguments.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Take the expected topology from a RayCluster or RayClusterFleet
    /// manifest (YAML), as `run` takes it from the API server when
    /// `kubernetes.enabled`; fields set under [cluster] still win.
    #[arg(long, value_name = "FILE")]
    pub raycluster: Option<PathBuf>,
}

/// `orchestrator plan`: prints the start argv and env, the wait, the
/// policies chosen, and the serve argv the launch policy gives for the
/// expected topology, as JSON. Exit 0, or 2 for a bad configuration,
/// manifest or plugin.
pub fn plan(args: PlanArgs) -> ExitCode {
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let topology = match &args.raycluster {
        None => config.cluster.topology(),
        Some(path) => match topology_from_manifest(path) {
            Ok(t) => orchestrator_kubernetes::raycluster::merge_with_config(t, &config.cluster),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    match plan_json(&config, &topology) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The expected topology of the first RayCluster or RayClusterFleet in a
/// YAML file.
fn topology_from_manifest(path: &std::path::Path) -> Result<Topology> {
    use orchestrator_kubernetes::raycluster::{RayCluster, RayClusterFleet};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("{} is not YAML", path.display()))?;
        match value["kind"].as_str() {
            Some("RayCluster") => {
                let rc: RayCluster = serde_json::from_value(value)
                    .with_context(|| format!("{}: not a valid RayCluster", path.display()))?;
                return Ok(rc.spec.topology());
            }
            Some("RayClusterFleet") => {
                let fleet: RayClusterFleet = serde_json::from_value(value)
                    .with_context(|| format!("{}: not a valid RayClusterFleet", path.display()))?;
                return Ok(fleet.spec.template.spec.topology());
            }
            _ => {}
        }
    }
    anyhow::bail!(
        "{} has no RayCluster or RayClusterFleet document",
        path.display()
    )
}

fn plan_json(config: &Config, topology: &Topology) -> Result<String> {
    let kuberay = std::env::var(KUBERAY_ENV).ok();
    let start = RayStart::for_config(config, kuberay.as_deref())?;
    let host = host::host(&config.plugins)?;
    let mut policies = serde_json::Map::new();
    let mut launch = None;
    // Workers run no policies (as in `run`): a policy file mounted only on
    // the head is not looked for on a worker.
    let worlds: &[World] = match config.role {
        Role::Head => &World::ALL,
        Role::Worker => &[],
    };
    for &world in worlds {
        let plugin = host::load_policy(&host, config, world)?;
        let (policy, _) = config.policies.for_world(world);
        policies.insert(
            world.name().to_string(),
            serde_json::json!({
                "plugin": plugin.name(),
                "sha256": plugin.info().sha256,
                "params": policy.params,
            }),
        );
        if world == World::Launch {
            launch = Some(plugin);
        }
    }
    let serve = match (config.role, &config.serve.model, launch) {
        (Role::Head, Some(_), Some(mut plugin)) => {
            let request = LaunchRequest {
                cluster: expected_cluster(config, topology),
                settings: config.serve.settings(),
            };
            match plugin.plan(&request, &config.policies.launch.params())? {
                Ok(plan) => {
                    serde_json::json!({"argv": plan.argv, "env": plan.env, "for": "the expected topology"})
                }
                Err(e) => serde_json::json!({"error": e.to_string()}),
            }
        }
        (Role::Head, None, _) => serde_json::json!({"skipped": "serve.model is not set"}),
        _ => serde_json::json!({"skipped": "workers do not serve"}),
    };
    let plan = serde_json::json!({
        "role": config.role,
        "open-file-limit": config.open_file_limit,
        "start": {
            "argv": start.argv(),
            "env": config.ray.env,
            "from-kuberay-command": config.ray.use_kuberay_command,
        },
        "wait": match config.role {
            Role::Head => serde_json::json!({
                "gcs-address": head_gcs_address(config),
                "expected": topology,
                "timeout-seconds": config.cluster.wait_timeout_seconds,
            }),
            Role::Worker => serde_json::json!({
                "head-gcs": start.join_address(),
                "gcs-wait-seconds": config.ray.gcs_wait_seconds,
            }),
        },
        "policies": policies,
        "serve": serve,
        "kubernetes": if config.kubernetes.enabled && config.role == Role::Head {
            serde_json::json!({
                "enabled": true,
                "api-server": config.kubernetes.api_server.as_deref().unwrap_or("in-cluster service account"),
                "raycluster": config.kubernetes.cluster_name.as_deref().unwrap_or("this pod's ray.io/cluster label"),
                "expected": "from the RayCluster at run time; fields set under [cluster] win",
                "events": config.kubernetes.events,
            })
        } else {
            serde_json::json!({"enabled": false})
        },
    });
    Ok(serde_json::to_string_pretty(&plan)?)
}

/// A cluster shaped like the expected topology, for `plan`.
fn expected_cluster(config: &Config, topology: &Topology) -> ClusterSnapshot {
    let topology = topology.clone();
    let mut nodes = vec![];
    let mut add = |gpu: f64, cpu: f64, head: bool| {
        let i = nodes.len();
        nodes.push(Node {
            id: format!("{:056x}", i + 1),
            address: format!("node-{i}"),
            hostname: format!("node-{i}"),
            is_head: head,
            alive: true,
            resources: Resources {
                cpu,
                gpu,
                ..Resources::default()
            },
            ..Node::default()
        });
    };
    if topology.groups.is_empty() {
        let per_node = if topology.nodes > 0 {
            topology.gpus / f64::from(topology.nodes)
        } else {
            0.0
        };
        for i in 0..topology.nodes {
            add(per_node.max(topology.min_gpus_per_node), 1.0, i == 0);
        }
    } else {
        // The head offers what the configuration says, else the GPUs the
        // topology counts beyond the groups'.
        let in_groups: f64 = topology
            .groups
            .iter()
            .map(|g| f64::from(g.replicas) * g.gpus_per_node)
            .sum();
        add(
            config
                .ray
                .num_gpus
                .unwrap_or((topology.gpus - in_groups).max(0.0)),
            config.ray.num_cpus.unwrap_or(1.0),
            true,
        );
        for g in &topology.groups {
            for _ in 0..g.replicas {
                add(g.gpus_per_node, g.cpus_per_node, false);
            }
        }
    }
    ClusterSnapshot {
        nodes,
        expected: topology,
        elapsed_ms: 0,
        deadline_ms: config.cluster.wait_timeout_seconds * 1000,
        diagnostics: vec![],
    }
}

/// `orchestrator run`.
pub fn run(args: ConfigArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::run_async(run_role(config))
}

async fn run_role(config: Config) -> Result<ExitCode> {
    let mut kubernetes = None;
    let code = run_role_with(config, &mut kubernetes).await;
    // The last Events (Stopping, ClusterNotReady, ...) reach the API server
    // before the process ends.
    if let Some(k) = kubernetes {
        k.flush(Duration::from_secs(3)).await;
    }
    code
}

async fn run_role_with(
    config: Config,
    kubernetes: &mut Option<crate::kube_setup::KubeHandle>,
) -> Result<ExitCode> {
    // Everything that can be refused is checked before anything starts.
    let kuberay = std::env::var(KUBERAY_ENV).ok();
    let start = match RayStart::for_config(&config, kuberay.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let host = host::host(&config.plugins)?;
    let mut policies = None;
    if config.role == Role::Head {
        let loaded = (|| -> Result<_> {
            Ok((
                host::load_policy(&host, &config, World::Readiness)?,
                host::load_policy(&host, &config, World::Launch)?,
                host::load_policy(&host, &config, World::Health)?,
            ))
        })();
        match loaded {
            Ok(p) => policies = Some(p),
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let status = Status::new();
    if config.endpoints_port != 0 {
        let address: std::net::SocketAddr =
            format!("{}:{}", config.endpoints_host, config.endpoints_port)
                .parse()
                .with_context(|| {
                    format!(
                        "endpoints-host {:?} is not an IP address",
                        config.endpoints_host
                    )
                })?;
        serve_endpoints(address, Arc::clone(&status))
            .await
            .with_context(|| {
                format!("cannot serve the endpoints on {address}: set endpoints-port")
            })?;
    }
    // Kubernetes (head only): connect while Ray starts; Events from now on.
    if config.role == Role::Head && config.kubernetes.enabled {
        *kubernetes = Some(crate::kube_setup::spawn(&config, &status));
    }
    if let Err(e) = spawn_reaper() {
        tracing::warn!("cannot reap orphans ({e})");
    }

    let nofile = raise_nofile(config.open_file_limit);
    match &nofile.short_of {
        None => tracing::info!(
            before = nofile.before,
            now = nofile.now,
            "open-file limit raised"
        ),
        Some(why) => tracing::warn!(
            wanted = config.open_file_limit,
            now = nofile.now,
            "open-file limit raised only to {}: {why}",
            nofile.now
        ),
    }
    let shutdown = Shutdown::install()?;
    if let Err(e) = become_subreaper() {
        tracing::warn!("cannot become the subreaper of Ray's processes ({e})");
    }
    let label = match config.role {
        Role::Head => "head",
        Role::Worker => "worker",
    };
    let grace = Duration::from_secs(config.ray.stop_grace_seconds);

    if config.role == Role::Worker {
        let address = start
            .join_address()
            .context("the worker's ray start command has no --address: set ray.gcs-address")?
            .to_string();
        tracing::info!(%address, "waiting for the head's GCS");
        let deadline = Duration::from_secs(config.ray.gcs_wait_seconds);
        status.enter("wait");
        tokio::select! {
            r = orchestrator_ray_gcs::GcsClient::connect_until(&address, deadline) => { r?; }
            () = shutdown.requested() => return Ok(ExitCode::SUCCESS),
        }
        tracing::info!(%address, "head's GCS answers");
    }

    let env: Vec<(String, String)> = config
        .ray
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let argv = start.argv();
    tracing::info!(node = label, "starting: {}", argv.join(" "));
    status.event(
        orchestrator_phases::status::EventKind::Normal,
        "StartingRay",
        format!("starting Ray ({label}): {}", argv.join(" ")),
    );
    let node = RayNode::start(label, &argv, &env, Duration::from_secs(300)).await?;

    let mut code = ExitCode::SUCCESS;
    if let Some((mut readiness, mut launch, mut health)) = policies {
        let facts = match kubernetes.as_mut().and_then(|k| k.facts.take()) {
            Some(setup) => setup.await.ok().flatten(),
            None => None,
        };
        let expected = facts
            .as_ref()
            .and_then(|f| f.borrow().expected.clone())
            .unwrap_or_else(|| config.cluster.topology());
        status.nodes(0, expected.nodes);
        status.enter("wait");
        let spec = WaitSpec {
            address: head_gcs_address(&config),
            expected: config.cluster.topology(),
            timeout: Duration::from_secs(config.cluster.wait_timeout_seconds),
            params: config.policies.readiness.params(),
            diagnostics: vec![],
            facts,
            status: Some(Arc::clone(&status)),
        };
        let outcome = tokio::select! {
            r = wait_for_cluster(&spec, &mut readiness) => Some(r),
            () = shutdown.requested() => None,
            daemon = node.exited() => {
                eprintln!("error: Ray's {daemon} during the wait");
                code = ExitCode::from(1);
                None
            }
        };
        match outcome {
            Some(Ok(ready)) => {
                let alive = ready.snapshot.nodes.iter().filter(|n| n.alive).count() as u32;
                status.nodes(alive, ready.snapshot.expected.nodes);
                status.readiness("ready".into());
                if config.serve.model.is_some() {
                    let serve = &config.serve;
                    let inputs = ServeInputs {
                        settings: serve.settings(),
                        launch_params: config.policies.launch.params(),
                        health_params: config.policies.health.params(),
                        probe_address: serve.probe_address(),
                        gcs_address: head_gcs_address(&config),
                        health_interval: Duration::from_millis(serve.health_interval_ms.max(10)),
                        generation_interval: Duration::from_millis(
                            serve.generation_interval_ms.max(10),
                        ),
                        health_timeout: Duration::from_millis(serve.health_timeout_ms.max(10)),
                        generation_timeout: Duration::from_millis(
                            serve.generation_timeout_ms.max(10),
                        ),
                        stop_grace: Duration::from_secs(serve.stop_grace_seconds),
                    };
                    let code = launch_and_serve(
                        &ready,
                        inputs,
                        &mut launch,
                        &mut health,
                        &status,
                        &shutdown,
                        std::slice::from_ref(&node),
                    )
                    .await;
                    status.enter("stopping");
                    if !node.stop(grace).await {
                        eprintln!("error: some of Ray's processes did not stop");
                        return Ok(ExitCode::from(1));
                    }
                    return Ok(code);
                }
                tracing::info!(
                    nodes = alive,
                    "cluster ready; serve.model is not set, supervising Ray"
                );
                status.enter("serve");
                status.health(
                    "healthy",
                    "cluster ready (nothing to serve: serve.model is not set)".into(),
                    true,
                );
            }
            Some(Err(e)) => {
                eprintln!("error: {e}");
                status.fail("ClusterNotReady", e.to_string());
                node.stop(grace).await;
                return Ok(ExitCode::from(1));
            }
            None => {
                node.stop(grace).await;
                return Ok(code);
            }
        }
    }

    if config.role == Role::Worker {
        status.enter("serve");
        status.nodes(1, 1);
        status.health("healthy", "worker: Ray node running".into(), true);
    }
    tokio::select! {
        () = shutdown.requested() => status.enter("stopping"),
        daemon = node.exited() => {
            let message = format!("Ray's {daemon} unexpectedly");
            eprintln!("error: {message}");
            status.fail("RayExited", message);
            code = ExitCode::from(1);
        }
    }
    if !node.stop(grace).await {
        eprintln!("error: some of Ray's processes did not stop");
        code = ExitCode::from(1);
    }
    Ok(code)
}
