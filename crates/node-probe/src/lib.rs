#![warn(unreachable_pub)]
//! # orchestrator-node-probe
//!
//! Reads a node's own health, as typed readings with units
//! ([`NodeReadings`]):
//!
//! - [`gpu`]: the GPUs through NVML, loaded at run time from the driver's
//!   `libnvidia-ml.so.1` (or the library `ORCHESTRATOR_NVML_LIBRARY`
//!   names). No library means "no NVIDIA GPUs visible", not an error. A
//!   background thread ([`GpuProbe::spawn`]) reads every device at the
//!   interval and waits on NVML's event set in between, so a critical XID
//!   is reported the moment NVML delivers it.
//! - [`host`]: free space where Ray writes, `/dev/shm`, memory and memory
//!   pressure, and the open-file limit the raylet really runs with.
//!
//! Entry points: [`GpuProbe`] for the GPUs and [`host::read`] for the rest;
//! [`read_once`] takes one full reading (what `orchestrator node check`
//! prints).

pub mod gpu;
pub mod host;

pub use gpu::{GpuProbe, GpuSnapshot, NVML_LIBRARY_ENV};
pub use host::HostTarget;
pub use orchestrator_domain::NodeReadings;

use std::time::Duration;

/// One full reading: the GPUs (waiting up to `xid_wait` for critical XID
/// events) and the host.
pub fn read_once(target: &HostTarget, advertised_gpus: f64, xid_wait: Duration) -> NodeReadings {
    let gpus = gpu::read_once(gpu::library_path().as_deref(), xid_wait);
    let mut readings = host::read(target);
    readings.advertised_gpus = advertised_gpus;
    gpus.fill(&mut readings);
    readings
}
