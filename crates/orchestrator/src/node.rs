//! `orchestrator node check`: this node's readings (GPUs through NVML,
//! host, raylet) and the node-health policy's verdict, for people and for
//! a pod's probe. Exit 0 healthy, 1 degraded or unhealthy, 2 bad input.

use crate::run::ConfigArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use orchestrator_domain::NodeVerdict;
use orchestrator_phases::node_health::check::{NodeCheck, check_this_node};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Commands about this node.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Read this node's GPUs, host and raylet, and print the node-health
    /// policy's verdict (exit 0 healthy, 1 degraded or unhealthy, 2 bad
    /// input).
    Check(CheckArgs),
}

/// `orchestrator node check` arguments.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The configuration (its node-health policy, params, ray.num-gpus,
    /// ray.temp-dir and ray.node-ip are used).
    #[command(flatten)]
    config: ConfigArgs,
    /// The node-health policy: a component file or builtin:NAME (default:
    /// the configuration's, else builtin:default).
    #[arg(long)]
    policy: Option<String>,
    /// A policy parameter KEY=VALUE (repeatable; added to the
    /// configuration's).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// GPUs this node advertises to Ray (default: ray.num-gpus, else what
    /// NVML sees).
    #[arg(long)]
    advertised_gpus: Option<f64>,
    /// Ray's temp dir (default: ray.temp-dir, else /tmp/ray).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Wait this long for critical XID events before reading, ms.
    #[arg(long, default_value_t = 0)]
    xid_wait_ms: u64,
    /// Print the readings and the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `node ...`.
pub fn run(command: NodeCommand) -> ExitCode {
    match command {
        NodeCommand::Check(args) => match check(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let config = args.config.load()?;
    let check = NodeCheck {
        policy: args.policy.clone(),
        params: crate::local::key_values(&args.params, "--param")
            .context("write it like --param min-shm-mb=1024")?,
        advertised_gpus: args.advertised_gpus,
        temp_dir: args.temp_dir.clone(),
        xid_wait: Duration::from_millis(args.xid_wait_ms),
    };
    let checked = check_this_node(&config, &check)?;
    if args.json {
        let value = serde_json::json!({ "readings": checked.readings, "verdict": checked.verdict });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{checked}");
    }
    Ok(match checked.verdict {
        NodeVerdict::Healthy => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
