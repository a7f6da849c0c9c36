//! Built-in node-health policy `default`: judges one node's own readings.
//!
//! **Unhealthy** (the node does not count toward readiness; a worker ends
//! after its grace period so that Kubernetes replaces its pod):
//! - a fatal XID on any GPU (`fatal-xids`, default below),
//! - uncorrectable ECC errors since the driver loaded (volatile),
//! - a failed row remapping,
//! - a GPU NVML cannot read (for example `GPU is lost`),
//! - fewer GPUs visible to NVML than the node advertises to Ray
//!   (`check-gpu-count = false` turns this off, as `orchestrator local`
//!   does for its stand-in GPU slots),
//! - the local raylet not running.
//!
//! **Degraded** (reported; serving goes on):
//! - GPUs advertised to Ray on a node without NVML (another vendor's GPUs,
//!   or slots that are not GPUs): the count cannot be checked,
//! - a GPU's clocks held down by thermal or power slowdown,
//! - rows pending remapping (the GPU wants a reset),
//! - Ray's temp dir more than `max-temp-dir-used-percent` full (90),
//! - `/dev/shm` smaller than `min-shm-mb` (512; NCCL and vLLM use it),
//! - the raylet's open-file limit below `min-open-files` (65536),
//! - memory pressure (PSI some avg10) above `max-memory-pressure-percent`
//!   (50).
//!
//! The default fatal XIDs, after NVIDIA's XID catalogue ("Analyzing Xid
//! Errors with the Xid Catalog", Ampere and newer): those whose immediate
//! action is a GPU reset, a reboot or a call to support rather than an
//! application restart. XIDs of application faults (13, 31, 43, 94 contained
//! ECC error, ...) are left to the serving process.

use orchestrator_plugin_sdk::node_health::*;

/// The `default` node-health policy.
pub struct DefaultNodeHealth;

/// XID, what it means.
const FATAL_XIDS: &[(u64, &str)] = &[
    (48, "double-bit ECC error"),
    (62, "internal micro-controller halt"),
    (64, "ECC row remapper failure"),
    (74, "NVLink error"),
    (79, "fallen off the bus"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
    (140, "unrecovered ECC error"),
];

/// Throttle reasons that mean the GPU is held down by heat or power.
const SLOWDOWN: &[(ThrottleReasons, &str)] = &[
    (ThrottleReasons::HW_SLOWDOWN, "hw-slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw-thermal-slowdown"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw-thermal-slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw-power-brake-slowdown",
    ),
];

struct Settings {
    check_gpu_count: bool,
    fatal_xids: Vec<u64>,
    max_temp_dir_used_percent: f64,
    min_shm_bytes: u64,
    min_open_files: u64,
    max_memory_pressure_percent: f64,
}

impl Settings {
    fn from(params: &Params) -> Result<Self, String> {
        let fatal_xids = match params.get("fatal-xids") {
            None => FATAL_XIDS.iter().map(|(x, _)| *x).collect(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<u64>().map_err(|_| {
                        format!(
                            "policy parameter `fatal-xids` = {list:?}: {x:?} is not an XID number; write numbers separated by commas, e.g. \"48,79,95\""
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let e = |e: orchestrator_plugin_sdk::ParamError| e.to_string();
        Ok(Self {
            check_gpu_count: params.bool_or("check-gpu-count", true).map_err(e)?,
            fatal_xids,
            max_temp_dir_used_percent: params
                .f64_or("max-temp-dir-used-percent", 90.0)
                .map_err(e)?,
            min_shm_bytes: u64::from(params.u32_or("min-shm-mb", 512).map_err(e)?) << 20,
            min_open_files: u64::from(params.u32_or("min-open-files", 65_536).map_err(e)?),
            max_memory_pressure_percent: params
                .f64_or("max-memory-pressure-percent", 50.0)
                .map_err(e)?,
        })
    }
}

fn xid_text(xid: u64) -> String {
    match FATAL_XIDS.iter().find(|(x, _)| *x == xid) {
        Some((_, meaning)) => format!("XID {xid} ({meaning})"),
        None => format!("XID {xid}"),
    }
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

impl NodeHealthPolicy for DefaultNodeHealth {
    fn judge(readings: &NodeReadings, params: &Params) -> NodeVerdict {
        let settings = match Settings::from(params) {
            Ok(s) => s,
            Err(e) => return NodeVerdict::Unhealthy(e),
        };
        let mut unhealthy = Vec::new();
        let mut degraded = Vec::new();

        for gpu in &readings.gpus {
            let i = gpu.index;
            if let Some(error) = &gpu.error {
                unhealthy.push(format!("GPU {i} cannot be read: {error}"));
            }
            for x in &gpu.xids {
                if settings.fatal_xids.contains(&x.xid) {
                    let text = format!("GPU {i} {}", xid_text(x.xid));
                    if !unhealthy.contains(&text) {
                        unhealthy.push(text);
                    }
                }
            }
            if let Some(n) = gpu.ecc_uncorrected_volatile.filter(|n| *n > 0) {
                unhealthy.push(format!(
                    "GPU {i} has {n} uncorrectable ECC error{}",
                    if n == 1 { "" } else { "s" }
                ));
            }
            if gpu.remap_failed == Some(true) {
                unhealthy.push(format!("GPU {i} row remapping failed"));
            }
            if gpu.remap_pending == Some(true) {
                degraded.push(format!("GPU {i} has rows pending remapping (reset it)"));
            }
            let held: Vec<&str> = SLOWDOWN
                .iter()
                .filter(|(flag, _)| gpu.throttle.bits() & flag.bits() != 0)
                .map(|(_, name)| *name)
                .collect();
            if !held.is_empty() {
                let temp = gpu
                    .temperature_c
                    .map(|t| format!(" at {t} C"))
                    .unwrap_or_default();
                degraded.push(format!("GPU {i} throttled{temp}: {}", held.join(", ")));
            }
        }

        let visible = readings.gpus.len() as f64;
        if settings.check_gpu_count && readings.advertised_gpus > visible + 1e-9 {
            match &readings.nvml_unavailable {
                // NVML answers and sees fewer GPUs than Ray was promised.
                None => unhealthy.push(format!(
                    "{} GPU{} visible, {} advertised to Ray",
                    trim(visible),
                    if visible == 1.0 { "" } else { "s" },
                    trim(readings.advertised_gpus)
                )),
                // No NVML at all: another vendor's GPUs, or slots that
                // are not GPUs; the count cannot be checked.
                Some(reason) => degraded.push(format!(
                    "{} GPUs advertised to Ray but the count cannot be checked ({reason})",
                    trim(readings.advertised_gpus)
                )),
            }
        }

        if readings.raylet_alive == Some(false) {
            unhealthy.push("the local raylet is not running".to_string());
        }

        if readings.temp_dir_total_bytes > 0 {
            let used = 100.0
                * (1.0
                    - readings.temp_dir_free_bytes as f64 / readings.temp_dir_total_bytes as f64);
            if used > settings.max_temp_dir_used_percent {
                degraded.push(format!(
                    "temp dir {} is {used:.0}% full ({} MiB free)",
                    readings.temp_dir,
                    readings.temp_dir_free_bytes >> 20
                ));
            }
        }
        match readings.shm_total_bytes {
            Some(shm) if shm < settings.min_shm_bytes => degraded.push(format!(
                "/dev/shm is {} MiB (min-shm-mb = {})",
                shm >> 20,
                settings.min_shm_bytes >> 20
            )),
            None => degraded.push("/dev/shm is missing".to_string()),
            Some(_) => {}
        }
        if let Some(limit) = readings.raylet_open_file_limit
            && limit < settings.min_open_files
        {
            degraded.push(format!(
                "the raylet may open only {limit} files (min-open-files = {})",
                settings.min_open_files
            ));
        }
        if let Some(p) = readings.memory_pressure_percent
            && p > settings.max_memory_pressure_percent
        {
            degraded.push(format!(
                "memory pressure {p:.0}% ({} MiB available)",
                readings.memory_available_bytes >> 20
            ));
        }

        if !unhealthy.is_empty() {
            NodeVerdict::Unhealthy(unhealthy.join("; "))
        } else if !degraded.is_empty() {
            NodeVerdict::Degraded(degraded.join("; "))
        } else {
            NodeVerdict::Healthy
        }
    }
}

orchestrator_plugin_sdk::export_node_health_policy!(DefaultNodeHealth);
