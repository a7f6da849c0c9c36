//! `cargo xtask bench plugins`: cold compile, load from cache, instantiate,
//! and one readiness call at 3, 1,000 and 10,000 nodes (median and p99)
//! through the built-in `node-count` (contract 0.2.0: aggregate queries);
//! at 1,000 nodes also the example policy that reads every node's labels
//! (0.2.0: the packed node table) and the same example's 0.1.0 build (the
//! whole snapshot copied); the host's RSS with the three built-ins loaded;
//! and the node-count logic run natively for comparison. The last line is
//! `BENCH plugins ...`.

use orchestrator_domain::*;
use orchestrator_policy_host::{HostConfig, PluginSource, PolicyHost};

/// A built-in, handed to the host as bytes (as the orchestrator does).
fn builtin(name: &str) -> PluginSource {
    let b = orchestrator_builtin_plugins::BUILTINS
        .iter()
        .find(|b| b.name == name)
        .map_or(&[][..], |b| b.wasm);
    PluginSource::Embedded {
        name: format!("builtin:{name}"),
        bytes: b,
    }
}
use std::time::{Duration, Instant};

fn node(i: u32) -> Node {
    Node {
        id: format!("{:056x}", u64::from(i) * 0x9e37_79b9 + 1),
        address: format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
        hostname: format!("vllm-worker-gpu-group-{i:05}"),
        is_head: i == 0,
        alive: i % 10 != 3,
        resources: Resources {
            cpu: 8.0,
            gpu: 2.0,
            memory_bytes: 32 << 30,
            object_store_memory_bytes: 8 << 30,
            custom: vec![ResourceAmount {
                name: "accelerator_type:A100".into(),
                amount: 1.0,
            }],
        },
        labels: vec![
            KeyValue::new("ray.io/node-group", "gpu-group"),
            KeyValue::new("accelerator", "a100"),
        ],
        start_time_ms: 1_764_072_000_000 + u64::from(i),
        health: Default::default(),
    }
}

fn snapshot(n: u32) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: (0..n).map(node).collect(),
        expected: Topology {
            nodes: n,
            gpus: f64::from(n) * 2.0,
            min_gpus_per_node: 1.0,
            groups: vec![],
        },
        elapsed_ms: 10_000,
        deadline_ms: 600_000,
        diagnostics: vec![],
    }
}

/// The same judgement as the built-in `node-count`, in native Rust.
fn native_node_count(s: &ClusterSnapshot) -> Readiness {
    let alive: Vec<&Node> = s.nodes.iter().filter(|n| n.alive).collect();
    let gpus: f64 = alive.iter().map(|n| n.resources.gpu).sum();
    let short = alive
        .iter()
        .filter(|n| n.resources.gpu < s.expected.min_gpus_per_node)
        .count();
    if alive.len() as u32 >= s.expected.nodes && gpus >= s.expected.gpus && short == 0 {
        Readiness::Ready
    } else {
        Readiness::Wait(format!(
            "{} of {} nodes alive",
            alive.len(),
            s.expected.nodes
        ))
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn measure(iterations: usize, mut f: impl FnMut()) -> Stats {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        f();
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node_count = builtin("node-count");

    // Cold compile: no cache at all.
    let cold_host = PolicyHost::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })?;
    let cold = measure(10, || {
        let _ = cold_host.readiness(&node_count);
    });
    drop(cold_host);

    // Load from a warm cache.
    let dir = std::env::temp_dir().join(format!("orchestrator-bench-{}", std::process::id()));
    let host = PolicyHost::new(HostConfig {
        cache_dir: Some(dir.clone()),
        ..HostConfig::default()
    })?;
    host.readiness(&node_count)?;
    let cached = measure(50, || {
        let _ = host.readiness(&node_count);
    });

    // RSS with the three built-ins loaded and instantiated.
    let mut readiness = host.readiness(&node_count)?;
    let mut launch = host.launch(&builtin("vllm"))?;
    let mut health = host.health(&builtin("default"))?;
    readiness.instantiate()?;
    launch.instantiate()?;
    health.instantiate()?;
    let rss = rss_mb();

    let instantiate = measure(200, || {
        let _ = readiness.instantiate();
    });

    let mut calls = Vec::new();
    for (n, iterations) in [(3u32, 5000usize), (1000, 2000), (10_000, 300)] {
        let snap = std::sync::Arc::new(snapshot(n));
        readiness.check_shared(&snap, &[])?; // warm
        let wasm = measure(iterations, || {
            let _ = std::hint::black_box(readiness.check_shared(&snap, &[]));
        });
        let native = measure(iterations, || {
            let _ = std::hint::black_box(native_node_count(std::hint::black_box(&snap)));
        });
        println!(
            "readiness call, {n:>5} nodes: median {:>9.1} us  p99 {:>9.1} us   (native Rust {:>7.1} us)",
            us(wasm.median),
            us(wasm.p99),
            us(native.median)
        );
        calls.push((n, wasm, native));
    }

    // A policy that reads every node's labels: the example, 0.2.0 and its
    // 0.1.0 build, on the same 1,000-node snapshot.
    let labels_params = [
        KeyValue::new("accelerator", "a100"),
        KeyValue::new("nodes", "1000"),
    ];
    let snap = std::sync::Arc::new(snapshot(1000));
    let mut labels_v02 = host.readiness(&PluginSource::file(
        orchestrator_test_plugins::ACCELERATOR_READINESS,
    ))?;
    let mut labels_v01 = host.readiness(&PluginSource::file(
        orchestrator_test_plugins::v0_1::ACCELERATOR_READINESS,
    ))?;
    let (a, b) = (
        labels_v02.check_shared(&snap, &labels_params)?,
        labels_v01.check(&snap, &labels_params)?,
    );
    if a != b {
        return Err(format!("0.1.0 and 0.2.0 builds disagree: {a:?} vs {b:?}").into());
    }
    let labels = measure(1000, || {
        let _ = std::hint::black_box(labels_v02.check_shared(&snap, &labels_params));
    });
    let v01 = measure(500, || {
        let _ = std::hint::black_box(labels_v01.check(&snap, &labels_params));
    });
    println!(
        "labels policy, 1000 nodes: 0.2.0 median {:>7.1} us  p99 {:>7.1} us;  0.1.0 build median {:>7.1} us",
        us(labels.median),
        us(labels.p99),
        us(v01.median)
    );
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "cold compile:      median {:>7.2} ms  p99 {:>7.2} ms",
        ms(cold.median),
        ms(cold.p99)
    );
    println!(
        "load from cache:   median {:>7.3} ms  p99 {:>7.3} ms",
        ms(cached.median),
        ms(cached.p99)
    );
    println!(
        "instantiate:       median {:>7.1} us  p99 {:>7.1} us",
        us(instantiate.median),
        us(instantiate.p99)
    );
    println!("host RSS with three plugins loaded: {rss:.1} MB");

    let (_, w1000, n1000) = &calls[1];
    let mut line = format!(
        "BENCH plugins cold_compile_ms={:.2} cold_compile_p99_ms={:.2} cache_load_ms={:.3} cache_load_p99_ms={:.3} instantiate_us={:.1} instantiate_p99_us={:.1}",
        ms(cold.median),
        ms(cold.p99),
        ms(cached.median),
        ms(cached.p99),
        us(instantiate.median),
        us(instantiate.p99)
    );
    for (n, wasm, _) in &calls {
        let label = match n {
            3 => "3_nodes",
            1000 => "1000_nodes",
            _ => "10000_nodes",
        };
        line.push_str(&format!(
            " call_{label}_us={:.1} call_{label}_p99_us={:.1}",
            us(wasm.median),
            us(wasm.p99)
        ));
    }
    line.push_str(&format!(
        " call_1000_nodes_labels_us={:.1} call_1000_nodes_labels_p99_us={:.1} call_1000_nodes_v01_us={:.1} native_1000_nodes_us={:.1} wasm_vs_native_1000={:.1} rss_mb={rss:.1}",
        us(labels.median),
        us(labels.p99),
        us(v01.median),
        us(n1000.median),
        us(w1000.median) / us(n1000.median).max(0.001)
    ));
    println!("{line}");
    Ok(())
}
