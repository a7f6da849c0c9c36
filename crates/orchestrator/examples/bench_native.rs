//! `cargo xtask bench native`: the native backend (vLLM's own multi-node
//! mode, no Ray) with real vLLM on this machine, a leader and a worker
//! each its own `orchestrator run`, tensor-parallel 2 over both ranks.
//!
//! - `last_rank_to_completion_s`: the worker (the last rank) starts 20 s
//!   after the leader -> the first completion through the leader's API.
//! - `death_to_serving_s`: the worker's vLLM rank is killed (SIGKILL) ->
//!   a completion again (the leader restarts the whole group).
//! - `lost_pod_to_serving_s`: the worker's orchestrator and vLLM are
//!   killed and a new worker starts at once -> a completion again.
//! - `stop_s`: SIGTERM to both -> both exited, nothing left.
//!
//! Usage: bench_native ORCHESTRATOR_BINARY (with ORCHESTRATOR_VLLM_BIN and
//! ORCHESTRATOR_TINY_MODEL set).

use orchestrator_test_support::{NativeGroup, required_env};
use std::time::Duration;

fn main() {
    let Some(binary) = std::env::args().nth(1) else {
        eprintln!("usage: bench_native ORCHESTRATOR_BINARY");
        std::process::exit(2);
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot make a temp dir: {e}");
            std::process::exit(1);
        }
    };
    let group = NativeGroup::new(
        binary,
        dir.path(),
        140,
        2,
        &required_env(
            "ORCHESTRATOR_TINY_MODEL",
            "cargo xtask bench native sets it",
        ),
        &required_env("ORCHESTRATOR_VLLM_BIN", "cargo xtask bench native sets it"),
    );
    let f = group.scenario(Duration::from_secs(20));
    println!(
        "BENCH native last_rank_to_completion_s={:.1} death_to_serving_s={:.1} lost_pod_to_serving_s={:.1} stop_s={:.1} worker_delay_s={:.0}",
        f.last_rank_to_completion.as_secs_f64(),
        f.death_to_serving.as_secs_f64(),
        f.lost_worker_to_serving.as_secs_f64(),
        f.stop.as_secs_f64(),
        f.worker_delay.as_secs_f64()
    );
}
