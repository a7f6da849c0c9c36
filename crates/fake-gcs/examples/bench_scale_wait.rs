//! `cargo xtask bench scale-wait`: the wait phase at 1,000 and 10,000 nodes,
//! end to end. A stand-in GCS speaking Ray's gRPC (this crate) serves the
//! real `orchestrator wait` (the binary, argv[1]) while it:
//!
//! 1. registers every worker but 1% + 1 in one burst,
//! 2. marks 1% of the registered workers dead,
//! 3. registers the missing workers and replacements for the dead ones; the
//!    last of these registrations completes the cluster.
//!
//! The steps are [`PHASE_GAP`] apart. Each size runs twice: with the raylet
//! probe on (`--raylet-answer-timeout 1`; every node's raylet is one of
//! [`RAYLETS`] stand-in raylets, and [`SILENT`] more nodes, registered
//! with the head, point at a port that accepts and never answers, so they
//! must not be counted) and off (`0`, the GCS's word alone, no silent
//! nodes). Measured per run: the time from the last registration (published by the
//! stand-in) to the orchestrator's `ready` line; the orchestrator's CPU time
//! (all threads, from /proc schedstat) and peak RSS (VmHWM), both sampled
//! every 2 ms until it exits; and the readiness-policy calls it made. The
//! last line is `BENCH scale-wait nodes=10000 ...` with the probe on, the
//! 1,000-node figures beside (`*_1000` keys) and the probe-off figures
//! (`*_noprobe` keys).

use orchestrator_fake_gcs::{StandIn, StandInRaylet, synthetic_node};
use orchestrator_test_support::cpu_seconds_of;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The stand-in GCS allocates as the orchestrator does (Ray's GCS is C++,
/// not glibc's malloc under fragmentation): the figure is the
/// orchestrator's latency.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Between the burst, the deaths and the last registrations: long enough
/// for the orchestrator to have taken in the previous step, so the figure
/// is the last registration's own latency, not a backlog.
const PHASE_GAP: Duration = Duration::from_millis(1000);

/// Stand-in raylets the nodes share (node `i` is served by raylet
/// `i % RAYLETS`): a connection and a call per node, as in a real
/// cluster, without one listening socket per node.
const RAYLETS: u32 = 256;

/// Nodes alive in the GCS whose raylet never answers (probe on only).
const SILENT: u32 = 5;

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Peak resident memory of a running process, MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

struct Run {
    probe: bool,
    nodes: u32,
    last_join_to_ready_ms: f64,
    cpu_s: f64,
    rss_mb: f64,
    policy_calls: u64,
}

fn one_size(
    orchestrator: &str,
    nodes: u32,
    probe: bool,
    runtime: &tokio::runtime::Runtime,
) -> Result<Run, String> {
    let gcs = runtime
        .block_on(StandIn::start(
            "127.0.0.2:0".parse().map_err(|e| format!("{e}"))?,
        ))
        .map_err(|e| format!("cannot start the stand-in GCS: {e}"))?;
    let mut raylets = Vec::new();
    for _ in 0..RAYLETS {
        raylets.push(
            runtime
                .block_on(StandInRaylet::start(
                    "127.0.0.2:0".parse().map_err(|e| format!("{e}"))?,
                ))
                .map_err(|e| format!("cannot start a stand-in raylet: {e}"))?,
        );
    }
    // Accepts connections (the kernel does) and never answers.
    let frozen = std::net::TcpListener::bind("127.0.0.3:0").map_err(|e| e.to_string())?;
    let frozen_port = frozen.local_addr().map_err(|e| e.to_string())?.port();
    let node = |i: u32| {
        let mut n = synthetic_node(i);
        n.node_manager_address = "127.0.0.2".into();
        n.node_manager_port = raylets[(i % RAYLETS) as usize].address().port().into();
        n
    };
    let silent = if probe { SILENT } else { 0 };
    let mut first = vec![node(0)];
    // Ids past every other node's.
    for i in 0..silent {
        let mut n = synthetic_node(1_000_000 + i);
        n.node_manager_address = "127.0.0.3".into();
        n.node_manager_port = frozen_port.into();
        first.push(n);
    }
    gcs.register(first);

    let mut child = Command::new(orchestrator)
        .args([
            "wait",
            "--address",
            &gcs.address(),
            "--nodes",
            &nodes.to_string(),
            "--timeout",
            "120",
            "--raylet-answer-timeout",
            if probe { "1" } else { "0" },
        ])
        .env("ORCHESTRATOR_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {orchestrator}: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (line_tx, line_rx) = mpsc::channel::<(u128, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send((now_us(), line));
        }
    });
    // Samples CPU and peak RSS until the process exits.
    let sampler = std::thread::spawn(move || {
        let (mut cpu, mut rss) = (0.0f64, 0.0f64);
        loop {
            match (cpu_seconds_of(pid), peak_rss_mb(pid)) {
                (Some(c), Some(r)) => (cpu, rss) = (c, r),
                _ => return (cpu, rss),
            }
            // A zombie keeps /proc/PID but loses its memory: stop there.
            if std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            {
                return (cpu, rss);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });

    let start = Instant::now();
    while gcs.subscribers() == 0 {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err("the orchestrator never subscribed to node changes".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));

    let workers = nodes - 1;
    let dead = (workers / 100).max(1);
    let held_back = dead + 1;
    // 1. The burst.
    gcs.register((1..=workers - held_back).map(node).collect());
    std::thread::sleep(PHASE_GAP);
    // 2. Deaths.
    let victims: Vec<Vec<u8>> = (1..=dead).map(|i| synthetic_node(i).node_id).collect();
    gcs.kill(&victims, "raylet missed too many heartbeats (stand-in)");
    std::thread::sleep(PHASE_GAP);
    // 3. The rest and the replacements; the last registration completes it.
    let rest: Vec<_> = (workers - held_back + 1..=workers + dead)
        .map(node)
        .collect();
    gcs.register(rest);
    let last_join_us = now_us();
    if gcs.alive() != (nodes + silent) as usize {
        return Err(format!(
            "stand-in bug: {} alive, {} wanted",
            gcs.alive(),
            nodes + silent
        ));
    }

    let deadline = Duration::from_secs(60);
    let (ready_us, line) = loop {
        match line_rx.recv_timeout(deadline) {
            Ok((at, line)) if line.starts_with("ready after") => break (at, line),
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                return Err(format!("no `ready` line within {deadline:?}"));
            }
        }
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    let (cpu_s, rss_mb) = sampler.join().map_err(|_| "sampler panicked")?;
    if !status.success() {
        return Err(format!("orchestrator wait exited {status}"));
    }
    let policy_calls = line
        .rsplit_once("; ")
        .and_then(|(_, tail)| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no policy-call count in {line:?}"))?;
    // The silent nodes are alive in the GCS and not counted.
    if !line.contains(&format!("{nodes} nodes alive")) {
        return Err(format!("ready with the wrong count: {line}"));
    }
    drop(frozen);
    Ok(Run {
        probe,
        nodes,
        last_join_to_ready_ms: (ready_us.saturating_sub(last_join_us)) as f64 / 1000.0,
        cpu_s,
        rss_mb,
        policy_calls,
    })
}

fn main() -> Result<(), String> {
    let orchestrator = std::env::args()
        .nth(1)
        .ok_or("usage: bench_scale_wait <path to the orchestrator binary>")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for probe in [true, false] {
        for nodes in [1000u32, 10_000] {
            let run = one_size(&orchestrator, nodes, probe, &runtime)?;
            println!(
                "{:>6} nodes, raylet probe {:>3}: last registration -> ready {:>7.1} ms   orchestrator CPU {:.3} s   peak RSS {:>6.1} MB   policy calls {}",
                run.nodes,
                if run.probe { "on" } else { "off" },
                run.last_join_to_ready_ms,
                run.cpu_s,
                run.rss_mb,
                run.policy_calls
            );
            runs.push(run);
        }
    }
    let [small, large, small_off, large_off] = &runs[..] else {
        return Err("four runs expected".into());
    };
    println!(
        "10x the nodes (probe on): CPU x{:.1}, peak RSS x{:.1}",
        large.cpu_s / small.cpu_s.max(1e-6),
        large.rss_mb / small.rss_mb.max(1e-6)
    );
    println!(
        "BENCH scale-wait nodes={} last_join_to_ready_ms={:.1} cpu_s={:.3} policy_calls={} rss_mb={:.1} last_join_to_ready_1000_ms={:.1} cpu_1000_s={:.3} policy_calls_1000={} rss_1000_mb={:.1} cpu_ratio_10x={:.1} rss_ratio_10x={:.1} last_join_to_ready_noprobe_ms={:.1} cpu_noprobe_s={:.3} rss_noprobe_mb={:.1} last_join_to_ready_1000_noprobe_ms={:.1}",
        large.nodes,
        large.last_join_to_ready_ms,
        large.cpu_s,
        large.policy_calls,
        large.rss_mb,
        small.last_join_to_ready_ms,
        small.cpu_s,
        small.policy_calls,
        small.rss_mb,
        large.cpu_s / small.cpu_s.max(1e-6),
        large.rss_mb / small.rss_mb.max(1e-6),
        large_off.last_join_to_ready_ms,
        large_off.cpu_s,
        large_off.rss_mb,
        small_off.last_join_to_ready_ms,
    );
    Ok(())
}
