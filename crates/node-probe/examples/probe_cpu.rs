//! What the probes cost on this machine: runs the GPU probe thread and
//! the host readings at the interval (as every node's orchestrator does)
//! for a while, and prints this process's CPU in percent of one core, the
//! rounds taken and the last reading. On the GPU machine it reads the
//! driver's NVML; elsewhere it takes the no-NVML path.
//!
//! Usage: probe_cpu [SECONDS (default 20)] [INTERVAL_MS (default 1000)]

use orchestrator_node_probe::{GpuProbe, HostTarget, gpu, host};
use std::time::{Duration, Instant};

/// CPU-seconds of every thread of this process (schedstat: nanoseconds).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let interval = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(1000));
    let probe = GpuProbe::spawn(gpu::library_path(), interval);
    let rx = probe.subscribe();
    let target = HostTarget::new("127.0.0.1", "/tmp/ray");
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut rounds = 0u64;
    let mut last = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(interval);
        let mut readings = host::read(&target);
        rx.borrow().fill(&mut readings);
        rounds += 1;
        last = Some(readings);
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::to_string_pretty(&last).unwrap_or_default()
    );
    println!(
        "PROBE cpu_percent={:.3} cpu_seconds={cpu:.3} wall_seconds={wall:.1} host_rounds={rounds} gpu_rounds={} interval_ms={}",
        100.0 * cpu / wall,
        rx.borrow().round,
        interval.as_millis()
    );
}
