//! `cargo xtask bench prefetch`: what warming the weights during the wait
//! saves vLLM's load. On a synthetic weights file of BENCH_PREFETCH_MB
//! (default 2048) in a directory on disk (BENCH_PREFETCH_DIR, default
//! /var/tmp), with the file evicted from the page cache
//! (`posix_fadvise(DONTNEED)`, which needs no privilege; dropping the
//! whole cache through /proc/sys/vm/drop_caches is tried and reported):
//!
//! - `cold_load_s`: reading the file cold, as vLLM's load does without a
//!   prefetch;
//! - `prefetch_s`: the orchestrator's prefetch (`prefetch::warm`) of the
//!   evicted file, which runs while the cluster forms;
//! - `warm_load_s`: reading it after the prefetch, as vLLM's load then
//!   does;
//! - `copy_s`: the prefetch with `copy-to` (the evicted file copied to
//!   another directory of the same disk, as from a shared volume to a
//!   local one), and `copy_read_s`: vLLM's read of the copy after it.
//!
//! The last line is `BENCH prefetch ...`.

use orchestrator_phases::prefetch::{PrefetchConfig, PrefetchState, warm};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Drops `path`'s pages from the page cache.
fn evict(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Seconds to read `path` to its end.
fn timed_read(path: &Path) -> std::io::Result<f64> {
    let started = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 4 << 20];
    while file.read(&mut buffer)? > 0 {}
    Ok(started.elapsed().as_secs_f64())
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("bench prefetch failed: {e}");
        std::process::exit(1);
    }
}

fn bench() -> std::io::Result<()> {
    let mib = env_u64("BENCH_PREFETCH_MB", 2048).max(16);
    let base = std::env::var("BENCH_PREFETCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("bench-prefetch-")
        .tempdir_in(&base)?;
    let file = dir.path().join("model-00001-of-00001.safetensors");
    eprintln!(
        "writing {mib} MiB of synthetic weights to {}",
        file.display()
    );
    {
        let mut out = std::fs::File::create(&file)?;
        let mut chunk = vec![0u8; 4 << 20];
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        for _ in 0..mib / 4 {
            out.write_all(&chunk)?;
        }
        out.sync_all()?;
    }
    let drop_caches = std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
    eprintln!(
        "dropping the whole page cache (/proc/sys/vm/drop_caches): {}; the file is also evicted with posix_fadvise(DONTNEED) before each cold read",
        if drop_caches {
            "done"
        } else {
            "not allowed here"
        }
    );

    evict(&file)?;
    let cold = timed_read(&file)?;
    evict(&file)?;
    let config = PrefetchConfig {
        paths: vec![dir.path().to_path_buf()],
        max_mb_per_second: 0,
        copy_to: None,
        ..PrefetchConfig::default()
    };
    let started = Instant::now();
    let done = warm(&config, &AtomicBool::new(false), |_| {});
    let prefetch = started.elapsed().as_secs_f64();
    if done.state != PrefetchState::Done {
        return Err(std::io::Error::other(format!("prefetch failed: {done:?}")));
    }
    let warm_load = timed_read(&file)?;

    evict(&file)?;
    let local = tempfile::Builder::new()
        .prefix("bench-prefetch-local-")
        .tempdir_in(&base)?;
    let copy_config = PrefetchConfig {
        copy_to: Some(local.path().join("model")),
        ..config
    };
    let started = Instant::now();
    let copied = warm(&copy_config, &AtomicBool::new(false), |_| {});
    let copy = started.elapsed().as_secs_f64();
    if copied.state != PrefetchState::Done {
        return Err(std::io::Error::other(format!("copy failed: {copied:?}")));
    }
    let copy_read = timed_read(&local.path().join("model/model-00001-of-00001.safetensors"))?;
    let gbps = |s: f64| mib as f64 / 1024.0 / s;
    println!();
    println!("{mib} MiB synthetic weights          seconds   GiB/s");
    println!(
        "vLLM-style read, cold cache     {cold:>9.3} {:>7.2}",
        gbps(cold)
    );
    println!(
        "prefetch during the wait        {prefetch:>9.3} {:>7.2}",
        gbps(prefetch)
    );
    println!(
        "vLLM-style read after prefetch  {warm_load:>9.3} {:>7.2}",
        gbps(warm_load)
    );
    println!(
        "prefetch copy-to (same disk)    {copy:>9.3} {:>7.2}",
        gbps(copy)
    );
    println!(
        "vLLM-style read of the copy     {copy_read:>9.3} {:>7.2}",
        gbps(copy_read)
    );
    println!();
    println!(
        "BENCH prefetch size_mb={mib} cold_load_s={cold:.3} prefetch_s={prefetch:.3} warm_load_s={warm_load:.3} load_speedup={:.1} copy_s={copy:.3} copy_read_s={copy_read:.3} drop_caches_allowed={drop_caches}",
        cold / warm_load.max(1e-9)
    );
    Ok(())
}
