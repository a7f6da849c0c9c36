//! A node's own health: what its probes read ([`NodeReadings`]), what its
//! node-health policy said ([`NodeVerdict`]), the report it publishes for
//! the head ([`HealthReport`]) and what the head makes of it
//! ([`NodeHealth`], carried on every [`Node`](crate::Node)).
//!
//! Field and case names are the WIT's (`wit/policy-0.2.0/types.wit`,
//! kebab-case in serde), where every item is documented.

#![allow(missing_docs)] // Each item is documented in the WIT: wit/policy-0.2.0/types.wit.

use serde::{Deserialize, Serialize};

/// A reason a GPU's clocks are held down (NVML's throttle reasons).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleReason {
    GpuIdle,
    ApplicationsClocksSetting,
    SwPowerCap,
    HwSlowdown,
    SyncBoost,
    SwThermalSlowdown,
    HwThermalSlowdown,
    HwPowerBrakeSlowdown,
    DisplayClockSetting,
}

impl ThrottleReason {
    /// Every reason, in NVML's bit order.
    pub const ALL: [ThrottleReason; 9] = [
        Self::GpuIdle,
        Self::ApplicationsClocksSetting,
        Self::SwPowerCap,
        Self::HwSlowdown,
        Self::SyncBoost,
        Self::SwThermalSlowdown,
        Self::HwThermalSlowdown,
        Self::HwPowerBrakeSlowdown,
        Self::DisplayClockSetting,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::GpuIdle => "gpu-idle",
            Self::ApplicationsClocksSetting => "applications-clocks-setting",
            Self::SwPowerCap => "sw-power-cap",
            Self::HwSlowdown => "hw-slowdown",
            Self::SyncBoost => "sync-boost",
            Self::SwThermalSlowdown => "sw-thermal-slowdown",
            Self::HwThermalSlowdown => "hw-thermal-slowdown",
            Self::HwPowerBrakeSlowdown => "hw-power-brake-slowdown",
            Self::DisplayClockSetting => "display-clock-setting",
        }
    }
}

/// A critical XID event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct XidEvent {
    pub xid: u64,
    pub age_ms: u64,
}

/// One GPU as NVML sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub ecc_enabled: Option<bool>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub remap_pending: Option<bool>,
    pub remap_failed: Option<bool>,
    pub xids: Vec<XidEvent>,
    pub temperature_c: Option<u32>,
    pub throttle: Vec<ThrottleReason>,
    pub power_watts: Option<f64>,
    pub error: Option<String>,
}

/// What one node's probes read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeReadings {
    pub address: String,
    pub advertised_gpus: f64,
    pub nvml_unavailable: Option<String>,
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuReading>,
    pub temp_dir: String,
    pub temp_dir_free_bytes: u64,
    pub temp_dir_total_bytes: u64,
    pub shm_total_bytes: Option<u64>,
    pub raylet_open_file_limit: Option<u64>,
    pub memory_available_bytes: u64,
    pub memory_total_bytes: u64,
    pub memory_pressure_percent: Option<f64>,
    pub raylet_alive: Option<bool>,
}

/// A node-health policy's verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NodeVerdict {
    Healthy,
    Degraded(String),
    Unhealthy(String),
}

impl NodeVerdict {
    /// The state this verdict puts a node in.
    pub fn state(&self) -> NodeHealthState {
        match self {
            Self::Healthy => NodeHealthState::Healthy,
            Self::Degraded(_) => NodeHealthState::Degraded,
            Self::Unhealthy(_) => NodeHealthState::Unhealthy,
        }
    }

    /// The reason (empty when healthy).
    pub fn reason(&self) -> &str {
        match self {
            Self::Healthy => "",
            Self::Degraded(r) | Self::Unhealthy(r) => r,
        }
    }
}

/// What a node's own health check last said, as the head knows it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeHealthState {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Unhealthy,
    Stale,
    Pending,
}

impl NodeHealthState {
    /// Every state.
    pub const ALL: [NodeHealthState; 6] = [
        Self::Unknown,
        Self::Healthy,
        Self::Degraded,
        Self::Unhealthy,
        Self::Stale,
        Self::Pending,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
            Self::Stale => "stale",
            Self::Pending => "pending",
        }
    }

    /// The number the node table carries (word 11).
    pub fn code(self) -> u64 {
        match self {
            Self::Unknown => 0,
            Self::Healthy => 1,
            Self::Degraded => 2,
            Self::Unhealthy => 3,
            Self::Stale => 4,
            Self::Pending => 5,
        }
    }
}

impl std::fmt::Display for NodeHealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A node's health as the head knows it: the state and its reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct NodeHealth {
    pub state: NodeHealthState,
    pub reason: String,
}

impl NodeHealth {
    /// Whether the node may count toward readiness: anything but
    /// unhealthy or pending its first report.
    pub fn usable(&self) -> bool {
        !matches!(
            self.state,
            NodeHealthState::Unhealthy | NodeHealthState::Pending
        )
    }

    /// Whether nothing is known (the default).
    pub fn is_unknown(&self) -> bool {
        self.state == NodeHealthState::Unknown
    }
}

/// What each node publishes for the head (in Ray's GCS key-value store):
/// its verdict and the readings behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthReport {
    /// The Ray node id (hex) the report is about.
    pub node_id: String,
    /// Counts up with every report, so the head sees a live reporter
    /// whatever the clocks say.
    pub seq: u64,
    /// How often the node reports, ms: the head calls the report stale
    /// after a few intervals without a new one.
    pub interval_ms: u64,
    /// When the report was written, ms since the Unix epoch (the node's
    /// clock; for people, not for staleness).
    pub written_at_ms: u64,
    /// The node-health policy's verdict.
    pub verdict: NodeVerdict,
    /// The readings it judged.
    pub readings: NodeReadings,
    /// The node's local copy of the model's files, when it makes one
    /// (`[serve.prefetch] copy-to`): the head serves from the copies only
    /// when every serving node's is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_copy: Option<LocalCopy>,
}

/// A node's local copy of the model's files.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LocalCopy {
    /// Where it is.
    pub path: String,
    /// Every file copied.
    pub complete: bool,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// Bytes of every file.
    pub bytes_total: u64,
}
