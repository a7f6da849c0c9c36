//! `orchestrator node check` as a library call: this node's readings
//! (GPUs through NVML, host, raylet) and the node-health policy's verdict,
//! once, and the readings as people read them. Entry point:
//! [`check_this_node`].

use crate::config::Config;
use crate::policies::{self, PolicyError, PolicyRef};
use orchestrator_domain::{KeyValue, NodeReadings, NodeVerdict};
use orchestrator_node_probe::{HostTarget, read_once};
use orchestrator_policy_host::{PluginError, World};
use std::path::PathBuf;
use std::time::Duration;

/// What the check is asked beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct NodeCheck {
    /// The policy (`builtin:NAME`, a file, `oci://...`); default: the
    /// configuration's.
    pub policy: Option<String>,
    /// Parameters added to the configuration's.
    pub params: Vec<KeyValue>,
    /// GPUs this node advertises (default: `ray.num-gpus`, else what NVML
    /// sees).
    pub advertised_gpus: Option<f64>,
    /// Ray's temp dir (default: `ray.temp-dir`, else /tmp/ray).
    pub temp_dir: Option<PathBuf>,
    /// How long to wait for critical XID events before reading.
    pub xid_wait: Duration,
}

/// What the check found.
#[derive(Debug, Clone)]
pub struct NodeChecked {
    /// This node's readings.
    pub readings: NodeReadings,
    /// The policy's verdict on them.
    pub verdict: NodeVerdict,
    /// The raylet found on this host.
    pub raylet: Option<i32>,
}

/// Why the check could not give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum NodeCheckError {
    /// The policy could not be fetched or loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy failed on the readings.
    #[error("the node-health policy failed: {0}")]
    Judge(#[source] PluginError),
}

/// Reads this node once and asks the node-health policy.
pub fn check_this_node(config: &Config, check: &NodeCheck) -> Result<NodeChecked, NodeCheckError> {
    let (configured, default) = config.policies.for_world(World::NodeHealth);
    let policy = match &check.policy {
        Some(text) => PolicyRef::parse(text),
        None => configured.policy(default),
    }
    .fetched(&config.registry)?;
    let mut params = configured.params();
    params.extend(check.params.iter().cloned());
    let host = policies::host(&config.plugins)?;
    let mut policy = policies::node_health(&host, &policy, "the node-health policy")?;
    let address = config.ray.node_ip.clone().unwrap_or_default();
    let temp_dir = check
        .temp_dir
        .clone()
        .or(config.ray.temp_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/tmp/ray"));
    let mut target = HostTarget::new(address.clone(), temp_dir);
    target.raylet_pid = local_raylet(&address);
    let mut readings = read_once(&target, 0.0, check.xid_wait);
    readings.advertised_gpus = check
        .advertised_gpus
        .or(config.ray.num_gpus)
        .unwrap_or(readings.gpus.len() as f64);
    let verdict = policy
        .judge(&readings, &params)
        .map_err(NodeCheckError::Judge)?;
    Ok(NodeChecked {
        readings,
        verdict,
        raylet: target.raylet_pid,
    })
}

/// The raylet on this host: the one for `address` when given.
fn local_raylet(address: &str) -> Option<i32> {
    crate::supervision::procfs::processes()
        .into_iter()
        .filter(|p| p.comm == "raylet" && !p.is_zombie())
        .find(|p| {
            address.is_empty()
                || std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&format!("--node_ip_address={address}"))
                })
        })
        .map(|p| p.pid)
}

impl std::fmt::Display for NodeChecked {
    /// The readings, one concern a line, then the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.readings;
        match (&r.nvml_unavailable, &r.driver_version) {
            (Some(reason), _) => writeln!(f, "NVML: {reason}")?,
            (None, driver) => writeln!(
                f,
                "NVML: driver {}, {} GPU{}",
                driver.as_deref().unwrap_or("?"),
                r.gpus.len(),
                if r.gpus.len() == 1 { "" } else { "s" }
            )?,
        }
        for g in &r.gpus {
            writeln!(f, "GPU {}: {} {}", g.index, g.name, g.uuid)?;
            writeln!(
                f,
                "  memory {} used of {}, temperature {}, power {}",
                gib(g.memory_used_bytes),
                gib(g.memory_total_bytes),
                g.temperature_c.map_or("n/a".into(), |t| format!("{t} C")),
                g.power_watts.map_or("n/a".into(), |p| format!("{p:.1} W")),
            )?;
            writeln!(
                f,
                "  ECC enabled {}, uncorrectable (volatile) {}, remap pending {}, remap failed {}",
                yes_no(g.ecc_enabled),
                g.ecc_uncorrected_volatile
                    .map_or("n/a".into(), |n| n.to_string()),
                yes_no(g.remap_pending),
                yes_no(g.remap_failed),
            )?;
            let throttle: Vec<&str> = g.throttle.iter().map(|t| t.name()).collect();
            let xids: Vec<String> = g.xids.iter().map(|x| x.xid.to_string()).collect();
            let none_or = |list: String| if list.is_empty() { "none".into() } else { list };
            writeln!(
                f,
                "  throttle reasons: {}; critical XIDs: {}",
                none_or(throttle.join(", ")),
                none_or(xids.join(", ")),
            )?;
            if let Some(e) = &g.error {
                writeln!(f, "  error: {e}")?;
            }
        }
        writeln!(f, "advertised GPUs: {}", r.advertised_gpus)?;
        writeln!(
            f,
            "temp dir {}: {} free of {}",
            r.temp_dir,
            gib(r.temp_dir_free_bytes),
            gib(r.temp_dir_total_bytes)
        )?;
        writeln!(
            f,
            "/dev/shm: {}",
            r.shm_total_bytes.map_or("missing".into(), gib)
        )?;
        writeln!(
            f,
            "memory: {} available of {}, pressure {}",
            gib(r.memory_available_bytes),
            gib(r.memory_total_bytes),
            r.memory_pressure_percent
                .map_or("n/a".into(), |p| format!("{p:.1}%"))
        )?;
        match (self.raylet, r.raylet_open_file_limit) {
            (Some(pid), Some(limit)) => writeln!(f, "raylet: pid {pid}, open-file limit {limit}")?,
            (Some(pid), None) => writeln!(f, "raylet: pid {pid}, not running")?,
            (None, _) => writeln!(f, "raylet: none on this host")?,
        }
        match &self.verdict {
            NodeVerdict::Healthy => writeln!(f, "verdict: healthy"),
            NodeVerdict::Degraded(r) => writeln!(f, "verdict: degraded: {r}"),
            NodeVerdict::Unhealthy(r) => writeln!(f, "verdict: unhealthy: {r}"),
        }
    }
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
