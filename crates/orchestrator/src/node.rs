//! `orchestrator node check`: this node's readings (GPUs through NVML,
//! host, raylet) and the node-health policy's verdict, for people and for
//! a pod's probe. Exit 0 healthy, 1 degraded or unhealthy, 2 bad input.

use crate::run::ConfigArgs;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use orchestrator_domain::{KeyValue, NodeReadings, NodeVerdict};
use orchestrator_node_probe::{HostTarget, read_once};
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_policy_host::World;
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

/// The raylet on this host: the one for `address` when given.
fn local_raylet(address: &str) -> Option<i32> {
    orchestrator_phases::supervision::procfs::processes()
        .into_iter()
        .filter(|p| p.comm == "raylet" && !p.is_zombie())
        .find(|p| {
            address.is_empty()
                || std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .contains(&format!("--node_ip_address={address}"))
                    })
                    .unwrap_or(false)
        })
        .map(|p| p.pid)
}

fn check(args: &CheckArgs) -> Result<ExitCode> {
    let config = args.config.load()?;
    let (configured, default) = config.policies.for_world(World::NodeHealth);
    let policy = match &args.policy {
        Some(text) => PolicyRef::parse(text),
        None => configured.policy(default),
    }
    .fetched(&config.registry)?;
    let mut params = configured.params();
    for p in &args.params {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => params.push(KeyValue::new(k, v)),
            _ => bail!("--param {p:?} is not KEY=VALUE; write it like --param min-shm-mb=1024"),
        }
    }
    let host = policies::host(&config.plugins)?;
    let mut policy = policies::node_health(&host, &policy, "the node-health policy")?;

    let address = config.ray.node_ip.clone().unwrap_or_default();
    let temp_dir = args
        .temp_dir
        .clone()
        .or(config.ray.temp_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/tmp/ray"));
    let mut target = HostTarget::new(address.clone(), temp_dir);
    target.raylet_pid = local_raylet(&address);
    let mut readings = read_once(&target, 0.0, Duration::from_millis(args.xid_wait_ms));
    readings.advertised_gpus = args
        .advertised_gpus
        .or(config.ray.num_gpus)
        .unwrap_or(readings.gpus.len() as f64);
    let verdict = policy
        .judge(&readings, &params)
        .context("the node-health policy failed")?;
    if args.json {
        let value = serde_json::json!({ "readings": readings, "verdict": verdict });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", human(&readings, target.raylet_pid));
        println!(
            "verdict: {}",
            match &verdict {
                NodeVerdict::Healthy => "healthy".to_string(),
                NodeVerdict::Degraded(r) => format!("degraded: {r}"),
                NodeVerdict::Unhealthy(r) => format!("unhealthy: {r}"),
            }
        );
    }
    Ok(match verdict {
        NodeVerdict::Healthy => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "n/a",
    }
}

/// The readings, one concern a line.
fn human(r: &NodeReadings, raylet: Option<i32>) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    match (&r.nvml_unavailable, &r.driver_version) {
        (Some(reason), _) => line(format!("NVML: {reason}")),
        (None, driver) => line(format!(
            "NVML: driver {}, {} GPU{}",
            driver.as_deref().unwrap_or("?"),
            r.gpus.len(),
            if r.gpus.len() == 1 { "" } else { "s" }
        )),
    }
    for g in &r.gpus {
        line(format!("GPU {}: {} {}", g.index, g.name, g.uuid));
        line(format!(
            "  memory {} used of {}, temperature {}, power {}",
            gib(g.memory_used_bytes),
            gib(g.memory_total_bytes),
            g.temperature_c.map_or("n/a".into(), |t| format!("{t} C")),
            g.power_watts.map_or("n/a".into(), |p| format!("{p:.1} W")),
        ));
        line(format!(
            "  ECC enabled {}, uncorrectable (volatile) {}, remap pending {}, remap failed {}",
            yes_no(g.ecc_enabled),
            g.ecc_uncorrected_volatile
                .map_or("n/a".into(), |n| n.to_string()),
            yes_no(g.remap_pending),
            yes_no(g.remap_failed),
        ));
        let throttle: Vec<&str> = g.throttle.iter().map(|t| t.name()).collect();
        let xids: Vec<String> = g.xids.iter().map(|x| x.xid.to_string()).collect();
        line(format!(
            "  throttle reasons: {}; critical XIDs: {}",
            if throttle.is_empty() {
                "none".into()
            } else {
                throttle.join(", ")
            },
            if xids.is_empty() {
                "none".into()
            } else {
                xids.join(", ")
            },
        ));
        if let Some(e) = &g.error {
            line(format!("  error: {e}"));
        }
    }
    line(format!("advertised GPUs: {}", r.advertised_gpus));
    line(format!(
        "temp dir {}: {} free of {}",
        r.temp_dir,
        gib(r.temp_dir_free_bytes),
        gib(r.temp_dir_total_bytes)
    ));
    line(format!(
        "/dev/shm: {}",
        r.shm_total_bytes.map_or("missing".into(), gib)
    ));
    line(format!(
        "memory: {} available of {}, pressure {}",
        gib(r.memory_available_bytes),
        gib(r.memory_total_bytes),
        r.memory_pressure_percent
            .map_or("n/a".into(), |p| format!("{p:.1}%"))
    ));
    match (raylet, r.raylet_open_file_limit) {
        (Some(pid), Some(limit)) => line(format!("raylet: pid {pid}, open-file limit {limit}")),
        (Some(pid), None) => line(format!("raylet: pid {pid}, not running")),
        (None, _) => line("raylet: none on this host".into()),
    }
    out
}
