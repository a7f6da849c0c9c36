//! The GPU probe against the NVML stand-in (`crates/nvml-standin`), loaded
//! through the same dynamic loading path as the driver's library.
//!
//! The stand-in finds its state file through the environment, so this
//! file holds one test (one thread): it sets the variable before any other
//! thread exists, then runs each case in turn.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::ThrottleReason;
use orchestrator_node_probe::gpu::{GpuProbe, read_once};
use orchestrator_test_support::nvml_standin_library;
use std::time::{Duration, Instant};

#[test]
fn gpu_probe_against_the_nvml_stand_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nvml.json");
    // SAFETY: the only test of this binary; no other thread reads the
    // environment while it is set.
    unsafe { std::env::set_var("NVML_STANDIN_STATE", &path) };
    readings_are_what_the_library_reports(&path);
    an_xid_reaches_the_probe_at_once_not_at_the_next_round(&path);
    an_xid_queued_before_the_first_round_is_in_it(&path);
    a_library_that_fails_to_initialise_means_no_gpus(&path);
}

fn write(path: &std::path::Path, json: &str) {
    // A new mtime for sure: the stand-in re-reads on change.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(path, json).expect("write state");
}

fn readings_are_what_the_library_reports(path: &std::path::Path) {
    write(
        path,
        r#"{"driver": "580.159.04", "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "memory_total": 85520809984, "memory_used": 1048576,
             "ecc": true, "ecc_uncorrected": 2, "temperature": 91, "throttle": 96, "power_mw": 412500},
            {"lost": true},
            {"ecc": false, "remap_pending": true, "remap_failed": true}]}"#,
    );
    let lib = nvml_standin_library();
    let s = read_once(Some(&lib), Duration::ZERO);
    assert_eq!(s.nvml_unavailable, None);
    assert_eq!(s.driver_version.as_deref(), Some("580.159.04"));
    assert_eq!(s.gpus.len(), 3);
    let g = &s.gpus[0];
    assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
    assert_eq!(
        (g.memory_total_bytes, g.memory_used_bytes),
        (85_520_809_984, 1_048_576)
    );
    assert_eq!(g.ecc_enabled, Some(true));
    assert_eq!(g.ecc_uncorrected_volatile, Some(2));
    assert_eq!(g.temperature_c, Some(91));
    assert_eq!(g.power_watts, Some(412.5));
    // 0x20 | 0x40: software and hardware thermal slowdown.
    assert_eq!(
        g.throttle,
        vec![
            ThrottleReason::SwThermalSlowdown,
            ThrottleReason::HwThermalSlowdown
        ]
    );
    assert_eq!(
        (g.remap_pending, g.remap_failed),
        (Some(false), Some(false))
    );
    assert!(g.error.is_none());
    let lost = &s.gpus[1];
    assert!(
        lost.error.as_deref().is_some_and(|e| e.contains("lost")),
        "{lost:?}"
    );
    let third = &s.gpus[2];
    assert_eq!(third.ecc_enabled, Some(false));
    assert_eq!(third.ecc_uncorrected_volatile, None, "ECC off: no count");
    assert_eq!(
        (third.remap_pending, third.remap_failed),
        (Some(true), Some(true))
    );
}

/// Waits (up to 10 s) until the probe has published its first round.
fn until_the_first_round(
    rx: &mut tokio::sync::watch::Receiver<orchestrator_node_probe::gpu::GpuSnapshot>,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.borrow_and_update().round == 0 {
        assert!(Instant::now() < deadline, "no first round");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn an_xid_reaches_the_probe_at_once_not_at_the_next_round(path: &std::path::Path) {
    write(path, r#"{"gpus": [{}, {}]}"#);
    // A long interval: only the event path can report within the test.
    let probe = GpuProbe::spawn(Some(nvml_standin_library()), Duration::from_secs(30));
    let mut rx = probe.subscribe();
    until_the_first_round(&mut rx);
    assert!(rx.borrow().gpus.iter().all(|g| g.xids.is_empty()));
    let written = Instant::now();
    write(
        path,
        r#"{"gpus": [{}, {}], "xids": [{"gpu": 1, "xid": 79}]}"#,
    );
    let seen = loop {
        let s = rx.borrow_and_update().clone();
        if let Some(x) = s.gpus.get(1).and_then(|g| g.xids.first()) {
            break x.clone();
        }
        assert!(
            Instant::now() < written + Duration::from_secs(5),
            "XID not reported"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(seen.xid, 79);
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "took {:?}",
        written.elapsed()
    );
    assert!(rx.borrow().gpus[0].xids.is_empty(), "GPU 0 had none");
}

fn an_xid_queued_before_the_first_round_is_in_it(path: &std::path::Path) {
    // The previous case's probe notices its closed channel within 250 ms.
    std::thread::sleep(Duration::from_millis(600));
    // The stand-in delivers each listed XID once: the first was delivered.
    write(
        path,
        r#"{"gpus": [{}, {}], "xids": [{"gpu": 1, "xid": 79}, {"gpu": 0, "xid": 48}]}"#,
    );
    let probe = GpuProbe::spawn(Some(nvml_standin_library()), Duration::from_secs(30));
    let mut rx = probe.subscribe();
    until_the_first_round(&mut rx);
    let first = rx.borrow().clone();
    assert_eq!(first.round, 1, "{first:?}");
    assert_eq!(
        first.gpus[0].xids.first().map(|x| x.xid),
        Some(48),
        "the first round has the queued XID: {first:?}"
    );
}

fn a_library_that_fails_to_initialise_means_no_gpus(path: &std::path::Path) {
    write(path, r#"{"init_error": true, "gpus": [{}]}"#);
    let s = read_once(Some(&nvml_standin_library()), Duration::ZERO);
    assert!(
        s.nvml_unavailable
            .is_some_and(|r| r.starts_with("no NVIDIA GPUs visible"))
    );
    assert!(s.gpus.is_empty());
}
