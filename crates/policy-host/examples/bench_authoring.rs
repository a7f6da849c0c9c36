//! `cargo xtask bench authoring`: what a policy written in Python costs
//! against the same policy in Rust. The example readiness policy
//! (`examples/accelerator-readiness`, and its Python port in
//! `examples/accelerator-readiness-python`, built with componentize-py by
//! the xtask) through the real host: component size, cold compile (no
//! cache), load from the compile cache, and one call at 3 and 1,000 nodes
//! (median). The last line is `BENCH authoring ...`.
//!
//! Usage: bench_authoring PYTHON_COMPONENT

use orchestrator_domain::*;
use orchestrator_policy_host::{HostConfig, PluginSource, PolicyHost};
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
            custom: vec![],
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

fn median(iterations: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

struct Figures {
    size_mb: f64,
    cold_compile_ms: f64,
    cache_load_ms: f64,
    call_3_us: f64,
    call_1000_us: f64,
}

fn measure(path: &str, cold_runs: usize) -> Result<Figures, Box<dyn std::error::Error>> {
    let source = PluginSource::file(path);
    let size_mb = std::fs::metadata(path)?.len() as f64 / 1e6;
    let cold_host = PolicyHost::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })?;
    let cold = median(cold_runs, || {
        let _ = cold_host.readiness(&source);
    });
    drop(cold_host);

    let dir = std::env::temp_dir().join(format!(
        "orchestrator-bench-authoring-{}",
        std::process::id()
    ));
    let host = PolicyHost::new(HostConfig {
        cache_dir: Some(dir.clone()),
        ..HostConfig::default()
    })?;
    host.readiness(&source)?;
    let cached = median(10, || {
        let _ = host.readiness(&source);
    });
    let mut policy = host.readiness(&source)?;
    let mut calls = Vec::new();
    for n in [3u32, 1000] {
        let params = [
            KeyValue::new("accelerator", "a100"),
            KeyValue::new("nodes", n.to_string()),
        ];
        let snap = std::sync::Arc::new(snapshot(n));
        let answer = policy.check_shared(&snap, &params)?; // instantiates
        println!("  {n:>4} nodes: {answer:?}");
        calls.push(median(if n == 3 { 500 } else { 100 }, || {
            let _ = std::hint::black_box(policy.check_shared(&snap, &params));
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Figures {
        size_mb,
        cold_compile_ms: cold.as_secs_f64() * 1e3,
        cache_load_ms: cached.as_secs_f64() * 1e3,
        call_3_us: calls[0].as_secs_f64() * 1e6,
        call_1000_us: calls[1].as_secs_f64() * 1e6,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let python = std::env::args()
        .nth(1)
        .ok_or("usage: bench_authoring PYTHON_COMPONENT")?;
    println!("Python (componentize-py):");
    let py = measure(&python, 3)?;
    println!("Rust (the SDK):");
    let rs = measure(orchestrator_test_plugins::ACCELERATOR_READINESS, 5)?;
    println!();
    println!("                         Python       Rust");
    println!(
        "component size MB     {:>9.2}  {:>9.2}",
        py.size_mb, rs.size_mb
    );
    println!(
        "cold compile ms       {:>9.0}  {:>9.1}",
        py.cold_compile_ms, rs.cold_compile_ms
    );
    println!(
        "load from cache ms    {:>9.2}  {:>9.2}",
        py.cache_load_ms, rs.cache_load_ms
    );
    println!(
        "call, 3 nodes us      {:>9.1}  {:>9.1}",
        py.call_3_us, rs.call_3_us
    );
    println!(
        "call, 1000 nodes us   {:>9.1}  {:>9.1}",
        py.call_1000_us, rs.call_1000_us
    );
    println!();
    println!(
        "BENCH authoring python_size_mb={:.2} python_cold_compile_ms={:.0} python_cache_load_ms={:.2} python_call_3_nodes_us={:.1} python_call_1000_nodes_us={:.1} rust_size_mb={:.2} rust_cache_load_ms={:.2} rust_call_1000_nodes_us={:.1}",
        py.size_mb,
        py.cold_compile_ms,
        py.cache_load_ms,
        py.call_3_us,
        py.call_1000_us,
        rs.size_mb,
        rs.cache_load_ms,
        rs.call_1000_us
    );
    Ok(())
}
