//! `cargo xtask bench scale`: the two figures of load-driven capacity,
//! each beside the old way in the same run.
//!
//! 1. **From zero workers to ready** under Ray's real autoscaler (its
//!    monitor with the fake multi-node provider starting real raylets on
//!    loopback): a head whose GPU worker group starts at zero asks the
//!    autoscaler for the layout while it waits, the worker is started, it
//!    joins, the stand-in vLLM serves. The old way, the same head that only
//!    waits (`request-resources = false`), is still not ready after as
//!    long as the new way took plus 20 s: nothing ever asks for the worker.
//! 2. **Burst to recommendation** on the load trace recorded from real
//!    vLLM (`crates/phases/tests/fixtures/vllm-load-trace.json`), replayed
//!    through the built-in scale policy in the real plugin host: how long
//!    after the burst's first sample the recommendation rose, and how often
//!    the answer changed, against a recommendation made from each sample
//!    alone (what an autoscaler without a window does).
//!
//! Usage: bench_scale ORCHESTRATOR_BINARY PROVIDER_DIR (ORCHESTRATOR_RAY_BIN set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::{KeyValue, LoadSample};
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::scale::{ScaleSpec, Window};
use orchestrator_test_support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a from-zero head; returns the seconds to ready, or none by `limit`.
fn from_zero(binary: &str, provider: &Path, request: bool, limit: Duration) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let (head_ip, worker_ip) = ("127.0.0.170", "127.0.0.171");
    let head = FromZeroHead::write(
        dir.path(),
        head_ip,
        worker_ip,
        provider,
        request,
        Serving::StandIn,
    );
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "--config", &head.config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("ORCHESTRATOR_LOG", "warn")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![child.id() as i32]);
    let endpoints = format!("127.0.0.1:{}", head.endpoints);
    let mut ready = None;
    while started.elapsed() < limit {
        if status(&endpoints).is_some_and(|s| s["ready"] == true) {
            ready = Some(started.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = gcs_nodes(&format!("{head_ip}:{}", head.gcs))
        .iter()
        .filter(|n| n.alive && !n.is_head)
        .count();
    signal(child.id() as i32, Sig::TERM);
    let exited = wait_exit(&mut child, Duration::from_secs(60));
    assert!(exited.success(), "the head exits 0 on SIGTERM");
    assert_nothing_left(&[head_ip, worker_ip, &head.temp, "stand_in_vllm.py"]);
    println!(
        "{:<44} {:>8}   workers joined: {workers}",
        if request {
            "head asks Ray's autoscaler (request-resources)"
        } else {
            "head only waits (the old way)"
        },
        ready.map_or_else(
            || format!("not in {:.0} s", limit.as_secs_f64()),
            |s| format!("{s:.1} s")
        )
    );
    ready
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct Trace {
    recorded: String,
    interval_ms: u64,
    window_ms: u64,
    target_requests_per_replica: f64,
    samples: Vec<LoadSample>,
}

fn changes(answers: &[u32]) -> usize {
    answers.windows(2).filter(|w| w[0] != w[1]).count()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (binary, provider) = match (args.get(1), args.get(2)) {
        (Some(b), Some(p)) => (b.clone(), Path::new(p).to_path_buf()),
        _ => panic!("usage: bench_scale ORCHESTRATOR_BINARY PROVIDER_DIR"),
    };

    println!(
        "from zero workers to ready (Ray 2.60's autoscaler, fake multi-node provider on loopback)"
    );
    let with = from_zero(&binary, &provider, true, Duration::from_secs(150))
        .expect("the head that asks becomes ready");
    let without = from_zero(
        &binary,
        &provider,
        false,
        Duration::from_secs_f64(with + 20.0),
    );
    assert!(without.is_none(), "a head that only waits has no worker");

    let trace: Trace =
        serde_json::from_str(include_str!("../tests/fixtures/vllm-load-trace.json")).unwrap();
    let target = trace.target_requests_per_replica;
    let spec = ScaleSpec {
        interval: Duration::from_millis(trace.interval_ms),
        window: Duration::from_millis(trace.window_ms),
        min_replicas: 1,
        max_replicas: 8,
        current_replicas: 1,
        params: vec![KeyValue::new(
            "target-requests-per-replica",
            target.to_string(),
        )],
    };
    let host = policies::host(&Default::default()).unwrap();
    let mut policy =
        policies::scale(&host, &PolicyRef::parse("builtin:scale/default"), "bench").unwrap();
    let mut window = Window::new(spec);
    let mut answers = vec![];
    let mut call_us = vec![];
    for s in &trace.samples {
        window.push(s.clone());
        let asked = Instant::now();
        let (answer, _) = window.recommend(&mut policy, s.at_ms).unwrap();
        call_us.push(asked.elapsed().as_secs_f64() * 1e6);
        answers.push(answer.desired_replicas);
    }
    let raw: Vec<u32> = trace
        .samples
        .iter()
        .map(|s| (((s.running + s.waiting) / target).ceil() as u32).clamp(1, 8))
        .collect();
    let burst = trace
        .samples
        .iter()
        .position(|s| s.running + s.waiting > target * 1.1)
        .expect("a burst in the trace");
    let rose = (burst..answers.len())
        .find(|&i| answers[i] > answers[burst.saturating_sub(1)])
        .expect("the recommendation rose");
    let burst_s = (trace.samples[rose].at_ms - trace.samples[burst].at_ms) as f64 / 1000.0;
    call_us.sort_by(f64::total_cmp);
    let median_us = call_us[call_us.len() / 2];
    println!(
        "\nrecorded vLLM load ({} samples at {} ms, window {} s, target {target} a replica)",
        trace.samples.len(),
        trace.interval_ms,
        trace.window_ms / 1000
    );
    println!(
        "built-in scale policy: up {burst_s:.1} s after the burst's first sample, {} changes, peak {}",
        changes(&answers),
        answers.iter().max().unwrap()
    );
    println!(
        "each sample alone (no window): {} changes, peak {}",
        changes(&raw),
        raw.iter().max().unwrap()
    );
    println!("policy call through the host: median {median_us:.0} us");
    println!(
        "BENCH scale from_zero_to_ready_s={with:.1} waiting_only_ready=never burst_to_recommendation_s={burst_s:.1} trace_changes={} trace_changes_without_window={} policy_call_us={median_us:.0}",
        changes(&answers),
        changes(&raw)
    );
}
