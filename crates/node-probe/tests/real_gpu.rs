//! On a machine with an NVIDIA GPU (the H100 lent to this project), the
//! probe reads plausible values through the driver's own NVML; skipped
//! where no NVML library can be loaded (every CPU machine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_node_probe::gpu::read_once;
use std::time::Duration;

#[test]
fn a_real_gpu_reads_plausibly_where_there_is_one() {
    let snapshot = read_once(None, Duration::from_millis(200));
    if let Some(reason) = &snapshot.nvml_unavailable {
        eprintln!("skipped: {reason}");
        return;
    }
    eprintln!("{snapshot:#?}");
    assert!(!snapshot.gpus.is_empty(), "NVML answered but saw no GPU");
    assert!(
        snapshot
            .driver_version
            .as_deref()
            .is_some_and(|v| !v.is_empty())
    );
    for g in &snapshot.gpus {
        assert!(g.error.is_none(), "{g:?}");
        assert!(g.name.starts_with("NVIDIA"), "{g:?}");
        assert!(g.uuid.starts_with("GPU-"), "{g:?}");
        // An H100 80GB has about 80 GiB; any datacenter GPU has > 8 GiB.
        assert!(g.memory_total_bytes > 8 << 30, "{g:?}");
        assert!(g.memory_used_bytes <= g.memory_total_bytes, "{g:?}");
        assert!(
            g.temperature_c.is_some_and(|t| (5..=110).contains(&t)),
            "{g:?}"
        );
        assert!(
            g.power_watts.is_some_and(|w| w > 1.0 && w < 2000.0),
            "{g:?}"
        );
        if g.name.contains("H100") {
            assert!(g.memory_total_bytes > 79 << 30, "{g:?}");
            assert_eq!(g.ecc_enabled, Some(true), "{g:?}");
            assert_eq!(g.ecc_uncorrected_volatile, Some(0), "{g:?}");
            assert_eq!(g.remap_failed, Some(false), "{g:?}");
        }
    }
}
