//! The GPUs through NVML, loaded at run time with `nvml-wrapper` (the
//! driver's `libnvidia-ml.so.1`, or the library [`NVML_LIBRARY_ENV`]
//! names: the tests' stand-in). Entry points: [`GpuProbe::spawn`] (a
//! thread that reads every device at the interval and waits on NVML's
//! event set in between, so a critical XID is published as soon as NVML
//! delivers it) and [`read_once`].
//!
//! No NVML library, or one that does not initialise, is the normal state
//! of a CPU node: [`GpuSnapshot::nvml_unavailable`] says why and the GPU
//! list is empty.

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet};
use orchestrator_domain::{GpuReading, NodeReadings, ThrottleReason, XidEvent};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Names the NVML library to load instead of the driver's
/// `libnvidia-ml.so.1` (a path).
pub const NVML_LIBRARY_ENV: &str = "ORCHESTRATOR_NVML_LIBRARY";

/// Most XIDs kept per GPU (the newest).
const XIDS_KEPT: usize = 16;

/// The library to load: [`NVML_LIBRARY_ENV`] when set.
pub fn library_path() -> Option<PathBuf> {
    std::env::var_os(NVML_LIBRARY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What one round of GPU readings found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSnapshot {
    /// Why NVML could not be used (`no NVIDIA GPUs visible: ...`).
    pub nvml_unavailable: Option<String>,
    /// The driver's version.
    pub driver_version: Option<String>,
    /// Every device.
    pub gpus: Vec<GpuReading>,
    /// Counts the rounds (0: none yet).
    pub round: u64,
}

impl GpuSnapshot {
    /// Copies the GPU readings into `readings`.
    pub fn fill(&self, readings: &mut NodeReadings) {
        readings.nvml_unavailable = self.nvml_unavailable.clone();
        readings.driver_version = self.driver_version.clone();
        readings.gpus = self.gpus.clone();
    }
}

/// A thread reading the GPUs; it ends when every receiver is dropped.
#[derive(Debug)]
pub struct GpuProbe {
    readings: watch::Receiver<GpuSnapshot>,
}

impl GpuProbe {
    /// Starts reading the GPUs every `interval`, loading NVML from
    /// `library` (the driver's when `None`).
    pub fn spawn(library: Option<PathBuf>, interval: Duration) -> Self {
        let (tx, rx) = watch::channel(GpuSnapshot::default());
        let spawned = std::thread::Builder::new()
            .name("gpu-probe".into())
            .spawn(move || run(library.as_deref(), interval, &tx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the GPU probe thread: {e}");
        }
        Self { readings: rx }
    }

    /// The readings, updated at every round and at every XID.
    pub fn subscribe(&self) -> watch::Receiver<GpuSnapshot> {
        self.readings.clone()
    }
}

/// Opens NVML, or says why it cannot be used.
fn open(library: Option<&Path>) -> Result<Nvml, String> {
    let mut builder = Nvml::builder();
    if let Some(path) = library {
        builder.lib_path(path.as_os_str());
    }
    builder
        .init()
        .map_err(|e| format!("no NVIDIA GPUs visible: {}", describe(&e)))
}

fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// XIDs seen so far: (device index, xid, when).
#[derive(Default)]
struct XidLog(Vec<(u32, u64, Instant)>);

impl XidLog {
    fn record(&mut self, index: u32, xid: u64) {
        tracing::warn!(gpu = index, xid, "NVML reported a critical XID");
        self.0.push((index, xid, Instant::now()));
        let of_device = self.0.iter().filter(|(i, _, _)| *i == index).count();
        if of_device > XIDS_KEPT
            && let Some(pos) = self.0.iter().position(|(i, _, _)| *i == index)
        {
            self.0.remove(pos);
        }
    }

    fn of(&self, index: u32) -> Vec<XidEvent> {
        self.0
            .iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, xid, at)| XidEvent {
                xid: *xid,
                age_ms: at.elapsed().as_millis() as u64,
            })
            .collect()
    }
}

/// An event set with every device registered for critical XIDs, when
/// NVML offers one.
fn xid_events(nvml: &Nvml, count: u32) -> Option<EventSet<'_>> {
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(e) => {
            tracing::info!("NVML offers no event set, XIDs are not watched: {e}");
            return None;
        }
    };
    let mut registered = 0;
    for i in 0..count {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                registered += 1;
            }
            Err(e) => {
                tracing::info!(gpu = i, "cannot watch XIDs: {}", e.error);
                // The set is consumed on failure; start a new one.
                set = nvml.create_event_set().ok()?;
            }
        }
    }
    (registered > 0).then_some(set)
}

/// At most this many queued XID events are taken before a round's
/// reading (a storm of them does not hold the reading back).
const MAX_QUEUED_XIDS: usize = 64;

/// Records the XID events already queued, without waiting.
fn drain_queued_xids(set: &EventSet<'_>, log: &mut XidLog) {
    for _ in 0..MAX_QUEUED_XIDS {
        if !wait_for_xids(set, Duration::ZERO, log) {
            break;
        }
    }
}

/// Waits up to `wait` for XID events, recording each; returns whether any
/// arrived.
fn wait_for_xids(set: &EventSet<'_>, wait: Duration, log: &mut XidLog) -> bool {
    let ms = wait.as_millis().min(u128::from(u32::MAX)) as u32;
    match set.wait(ms) {
        Ok(event) => {
            let index = event.device.index().unwrap_or(u32::MAX);
            let xid = match event.event_data {
                Some(XidError::Value(v)) => v,
                _ => 0,
            };
            log.record(index, xid);
            true
        }
        Err(NvmlError::Timeout) => false,
        Err(e) => {
            tracing::debug!("waiting for NVML events failed: {e}");
            std::thread::sleep(wait);
            false
        }
    }
}

fn run(library: Option<&Path>, interval: Duration, tx: &watch::Sender<GpuSnapshot>) {
    let nvml = match open(library) {
        Ok(nvml) => nvml,
        Err(reason) => {
            tracing::info!("{reason}");
            tx.send_replace(GpuSnapshot {
                nvml_unavailable: Some(reason),
                round: 1,
                ..GpuSnapshot::default()
            });
            return;
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let count = nvml.device_count().unwrap_or(0);
    let events = xid_events(&nvml, count);
    let mut log = XidLog::default();
    let mut round = 0;
    while !tx.is_closed() {
        round += 1;
        // What is queued is in this round's reading: without this, the
        // first round reported a GPU with a pending XID healthy, and a
        // wait could count the node ready on it before the next round.
        if let Some(set) = &events {
            drain_queued_xids(set, &mut log);
        }
        tx.send_replace(GpuSnapshot {
            nvml_unavailable: None,
            driver_version: driver.clone(),
            gpus: read_devices(&nvml, &log),
            round,
        });
        let due = Instant::now() + interval;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() || tx.is_closed() {
                break;
            }
            // Wake at least every 250 ms to notice a closed channel.
            let wait = left.min(Duration::from_millis(250));
            let seen = match &events {
                Some(set) => wait_for_xids(set, wait, &mut log),
                None => {
                    std::thread::sleep(wait);
                    false
                }
            };
            if seen {
                break; // read again and publish at once
            }
        }
    }
}

/// One round, for `orchestrator node check`: waits up to `xid_wait` for
/// XID events, then reads every device.
pub fn read_once(library: Option<&Path>, xid_wait: Duration) -> GpuSnapshot {
    let nvml = match open(library) {
        Ok(nvml) => nvml,
        Err(reason) => {
            return GpuSnapshot {
                nvml_unavailable: Some(reason),
                round: 1,
                ..GpuSnapshot::default()
            };
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut log = XidLog::default();
    if !xid_wait.is_zero()
        && let Some(set) = xid_events(&nvml, count)
    {
        let until = Instant::now() + xid_wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            wait_for_xids(&set, left, &mut log);
        }
    }
    GpuSnapshot {
        nvml_unavailable: None,
        driver_version: nvml.sys_driver_version().ok(),
        gpus: read_devices(&nvml, &log),
        round: 1,
    }
}

fn read_devices(nvml: &Nvml, log: &XidLog) -> Vec<GpuReading> {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("NVML cannot count the GPUs: {e}");
            return Vec::new();
        }
    };
    (0..count).map(|i| read_device(nvml, i, log)).collect()
}

/// Keeps a reading's value; a lost GPU is recorded as the reading's error,
/// anything else (not supported, ...) as no value.
fn keep<T>(result: Result<T, NvmlError>, error: &mut Option<String>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::GpuLost) => {
            *error = Some("GPU is lost (fallen off the bus?)".to_string());
            None
        }
        Err(_) => None,
    }
}

const THROTTLE: [(ThrottleReasons, ThrottleReason); 9] = [
    (ThrottleReasons::GPU_IDLE, ThrottleReason::GpuIdle),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        ThrottleReason::ApplicationsClocksSetting,
    ),
    (ThrottleReasons::SW_POWER_CAP, ThrottleReason::SwPowerCap),
    (ThrottleReasons::HW_SLOWDOWN, ThrottleReason::HwSlowdown),
    (ThrottleReasons::SYNC_BOOST, ThrottleReason::SyncBoost),
    (
        ThrottleReasons::SW_THERMAL_SLOWDOWN,
        ThrottleReason::SwThermalSlowdown,
    ),
    (
        ThrottleReasons::HW_THERMAL_SLOWDOWN,
        ThrottleReason::HwThermalSlowdown,
    ),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        ThrottleReason::HwPowerBrakeSlowdown,
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        ThrottleReason::DisplayClockSetting,
    ),
];

fn read_device(nvml: &Nvml, index: u32, log: &XidLog) -> GpuReading {
    let mut error = None;
    let mut g = GpuReading {
        index,
        xids: log.of(index),
        ..GpuReading::default()
    };
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            g.error = Some(e.to_string());
            return g;
        }
    };
    g.uuid = keep(device.uuid(), &mut error).unwrap_or_default();
    g.name = keep(device.name(), &mut error).unwrap_or_default();
    if let Some(m) = keep(device.memory_info(), &mut error) {
        g.memory_total_bytes = m.total;
        g.memory_used_bytes = m.used;
    }
    g.ecc_enabled = keep(device.is_ecc_enabled(), &mut error).map(|m| m.currently_enabled);
    if g.ecc_enabled == Some(true) {
        g.ecc_uncorrected_volatile = keep(
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            &mut error,
        );
    }
    if let Some((pending, failed)) = remapped_rows(nvml, &device) {
        g.remap_pending = Some(pending);
        g.remap_failed = Some(failed);
    }
    g.temperature_c = keep(device.temperature(TemperatureSensor::Gpu), &mut error);
    if let Some(reasons) = keep(device.current_throttle_reasons(), &mut error) {
        g.throttle = THROTTLE
            .iter()
            .filter(|(flag, _)| reasons.contains(*flag))
            .map(|(_, reason)| *reason)
            .collect();
    }
    g.power_watts = keep(device.power_usage(), &mut error).map(|mw| f64::from(mw) / 1000.0);
    g.error = error;
    g
}

/// (rows pending remapping, remapping failed), from
/// `nvmlDeviceGetRemappedRows`, which `nvml-wrapper` 0.13 does not wrap:
/// called through its loaded symbol table, only when the library has it.
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Option<(bool, bool)> {
    let function = nvml.lib().nvmlDeviceGetRemappedRows.as_ref().ok()?;
    let (mut corrected, mut uncorrected, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the handle comes from this NVML instance and stays valid
    // while `device` borrows it; the four out-pointers are live locals of
    // the types the C signature names (unsigned int *).
    let status = unsafe {
        function(
            device.handle(),
            &mut corrected,
            &mut uncorrected,
            &mut pending,
            &mut failed,
        )
    };
    (status == 0).then_some((pending != 0, failed != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_means_no_gpus_visible_not_an_error() {
        let snapshot = read_once(
            Some(Path::new("/nonexistent/libnvidia-ml.so.1")),
            Duration::ZERO,
        );
        let reason = snapshot.nvml_unavailable.expect("unavailable");
        assert!(reason.starts_with("no NVIDIA GPUs visible: "), "{reason}");
        assert!(reason.contains("libnvidia-ml.so.1"), "{reason}");
        assert!(snapshot.gpus.is_empty());
    }

    #[test]
    fn the_probe_thread_reports_once_and_ends_without_nvml() {
        let probe = GpuProbe::spawn(
            Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            Duration::from_millis(50),
        );
        let mut rx = probe.subscribe();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.borrow_and_update().round == 0 {
            assert!(Instant::now() < deadline, "no report");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rx.borrow().nvml_unavailable.is_some());
    }
}
