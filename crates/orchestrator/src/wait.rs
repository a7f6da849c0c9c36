//! `orchestrator wait`: the wait phase as a command for any shell script,
//! the drop-in replacement for `until ray status | grep ...; do sleep 5; done`.

use anyhow::Result;
use clap::Args;
use orchestrator_domain::Topology;
use orchestrator_phases::config::PluginLimits;
use orchestrator_phases::membership::RayGcs;
use orchestrator_phases::policies;
use orchestrator_phases::wait::{WaitSpec, wait_for_cluster};
use orchestrator_policy_host::ReadinessPolicy;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wait until a Ray cluster is ready.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The GCS address, HOST:PORT.
    #[arg(long, env = "ORCHESTRATOR_GCS_ADDRESS")]
    pub address: String,
    /// How an `oci://` policy is pulled.
    #[command(flatten)]
    pub registry: crate::plugin::RegistryArgs,
    /// Nodes that must be alive, the head included.
    #[arg(long)]
    pub nodes: u32,
    /// GPUs the cluster must offer in total.
    #[arg(long, default_value_t = 0.0)]
    pub gpus: f64,
    /// GPUs every node must offer.
    #[arg(long, default_value_t = 0.0)]
    pub min_gpus_per_node: f64,
    /// Seconds to wait before giving up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The readiness policy: a component file or builtin:NAME.
    #[arg(long, default_value = "builtin:node-count")]
    pub policy: String,
    /// The policy file's sha256, to refuse any other file.
    #[arg(long)]
    pub sha256: Option<String>,
    /// A policy parameter, KEY=VALUE; repeat for more.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Before answering ready, every node's raylet must answer a call
    /// within this many seconds; one that does not (frozen, cut off) is
    /// not counted until it does. 0: trust the GCS alone, which lists a
    /// frozen node as alive until its health checks give up (about 30 s
    /// under Ray's defaults).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub raylet_answer_timeout: f64,
}

/// The longest `--timeout`: a year.
const MAX_TIMEOUT_S: u64 = 365 * 24 * 3600;

/// Runs the command: 0 ready, 1 failed or timed out, 2 bad arguments.
pub fn run(args: WaitArgs) -> ExitCode {
    if args.nodes == 0 {
        eprintln!("error: --nodes must be at least 1 (the head counts)");
        return ExitCode::from(2);
    }
    if args.timeout == 0 || args.timeout > MAX_TIMEOUT_S {
        eprintln!(
            "error: --timeout {}: give 1 to {MAX_TIMEOUT_S} seconds (a year)",
            args.timeout
        );
        return ExitCode::from(2);
    }
    // A token configuration that cannot work is refused before anything
    // is asked of the cluster.
    if let Err(e) = orchestrator_phases::membership::RayAuth::from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let ask_nodes = match Duration::try_from_secs_f64(args.raylet_answer_timeout) {
        Ok(limit) if limit.is_zero() => None,
        Ok(limit) => Some(limit.min(Duration::from_secs(3600))),
        Err(_) => {
            eprintln!(
                "error: --raylet-answer-timeout {}: give a number of seconds, 0 to trust the GCS alone",
                args.raylet_answer_timeout
            );
            return ExitCode::from(2);
        }
    };
    let params = match crate::local::key_values(&args.params, "--param") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let policy = args
        .registry
        .policy(&args.policy)
        .map(|policy| policy.pinned(args.sha256.clone()));
    let policy = policies::host(&PluginLimits::default())
        .and_then(|host| policy.and_then(|policy| policies::readiness(&host, &policy, "--policy")));
    let mut policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let spec = WaitSpec {
        health: None,
        source: Arc::new(RayGcs::new(args.address.clone())),
        expected: Topology {
            nodes: args.nodes,
            gpus: args.gpus,
            min_gpus_per_node: args.min_gpus_per_node,
            groups: vec![],
        },
        timeout: Duration::from_secs(args.timeout),
        params,
        diagnostics: vec![],
        facts: None,
        status: None,
        request_resources: false,
        ask_nodes,
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let start = Instant::now();
    let waited = runtime.block_on(async { run_wait(&spec, &mut policy).await });
    // A script waits on this exit: the connections, the policy's instance
    // and the runtime go with the process instead of being taken down one
    // by one. `wait` starts no process, so nothing is left behind.
    let code = match waited {
        Ok(summary) => {
            println!(
                "ready after {:.3} s: {summary}",
                start.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    orchestrator_phases::supervision::exit_at_once(code)
}

async fn run_wait(spec: &WaitSpec, policy: &mut ReadinessPolicy) -> Result<String> {
    Ok(wait_for_cluster(spec, policy).await?.summary())
}
