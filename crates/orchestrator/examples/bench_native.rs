//! `cargo xtask bench native`: the native backend (vLLM's own multi-node
//! mode, no Ray) with real vLLM on this machine, a leader and a worker,
//! tensor-parallel 2 over both ranks; side by side in the same run with
//! the old way, each rank's `vllm serve` started directly as the
//! LeaderWorkerSet examples do (the same argv, from `orchestrator plan`).
//!
//! - `last_rank_to_completion_s`: the worker (the last rank) starts 20 s
//!   after the leader -> the first completion through the leader's API,
//!   with the early launch (rank 0 starts while the worker registers; the
//!   worker's rank as it registers); `all_present_last_rank_to_completion_s`:
//!   the same with `early-launch = false` (the group starts once every
//!   rank is present); `old_last_rank_to_completion_s`: the old way.
//! - `death_to_serving_s`: the worker's vLLM rank is killed (SIGKILL) ->
//!   a completion again (the leader restarts the whole group); the old
//!   way: `old_death_to_serving_s`, `never` when no completion succeeds
//!   within 90 s.
//! - `lost_pod_to_serving_s`: the worker's orchestrator and vLLM are
//!   killed and a new worker starts at once -> a completion again.
//! - `stop_s`: SIGTERM to both -> both exited, nothing left.
//!
//! Usage: bench_native ORCHESTRATOR_BINARY (with ORCHESTRATOR_VLLM_BIN and
//! ORCHESTRATOR_TINY_MODEL set).

use orchestrator_test_support::{NativeGroup, Sig, poll_until, required_env, signal_group};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKER_DELAY: Duration = Duration::from_secs(20);

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

/// One rank's argv and environment.
type RankCommand = (Vec<String>, Vec<(String, String)>);

/// Every rank's argv and environment as `orchestrator plan` gives them for
/// the leader's configuration.
fn planned(group: &NativeGroup) -> Vec<RankCommand> {
    let out = Command::new(&group.binary)
        .args(["plan", "--config"])
        .arg(group.config(0))
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(format!("cannot run orchestrator plan: {e}")));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| fail(format!("orchestrator plan printed no JSON: {e}")));
    let ranks = plan["ranks"]
        .as_array()
        .unwrap_or_else(|| fail(format!("no ranks in the plan: {plan}")));
    ranks
        .iter()
        .map(|r| {
            let argv = r["argv"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let env = r["env"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|kv| {
                            Some((
                                kv["key"].as_str()?.to_string(),
                                kv["value"].as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            (argv, env)
        })
        .collect()
}

/// The old way: every rank's `vllm serve` started directly, the worker
/// late; then the worker's rank killed, with nothing to act on it.
fn old_way(group: &NativeGroup) -> (Duration, Option<Duration>) {
    let ranks = planned(group);
    let spawn = |rank: usize| {
        let (argv, env) = &ranks[rank];
        let log = std::fs::File::create(group.dir.join(format!("old-rank-{rank}.log")))
            .unwrap_or_else(|e| fail(e));
        Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().cloned())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", argv[0])))
    };
    let mut leader = spawn(0);
    std::thread::sleep(WORKER_DELAY);
    let mut worker = spawn(1);
    let t = Instant::now();
    group.until_serving(Duration::from_secs(400));
    let to_completion = t.elapsed();
    eprintln!(
        "old way: served {:.1} s after the last rank started",
        to_completion.as_secs_f64()
    );
    let groups = [leader.id() as i32, worker.id() as i32];
    signal_group(groups[1], Sig::KILL);
    let t = Instant::now();
    let mut recovered = None;
    while t.elapsed() < Duration::from_secs(90) {
        if group.complete().is_ok() {
            recovered = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("old way: after rank 1's vLLM was killed: {recovered:?}");
    for g in groups {
        signal_group(g, Sig::TERM);
    }
    std::thread::sleep(Duration::from_secs(5));
    for g in groups {
        signal_group(g, Sig::KILL);
    }
    let _ = leader.wait();
    let _ = worker.wait();
    poll_until(
        "the old way's processes gone",
        Duration::from_secs(30),
        || NativeGroup::left_in(&groups).is_empty().then_some(()),
    );
    (to_completion, recovered)
}

fn main() {
    let Some(binary) = std::env::args().nth(1) else {
        eprintln!("usage: bench_native ORCHESTRATOR_BINARY");
        std::process::exit(2);
    };
    let (model, vllm) = (
        required_env(
            "ORCHESTRATOR_TINY_MODEL",
            "cargo xtask bench native sets it",
        ),
        required_env("ORCHESTRATOR_VLLM_BIN", "cargo xtask bench native sets it"),
    );
    let dirs = (
        tempfile::tempdir().unwrap_or_else(|e| fail(e)),
        tempfile::tempdir().unwrap_or_else(|e| fail(e)),
    );
    let old = NativeGroup::new(&binary, dirs.0.path(), 142, 2, &model, &vllm);
    let (old_to_completion, old_recovered) = old_way(&old);
    let all_present_dir = tempfile::tempdir().unwrap_or_else(|e| fail(e));
    let mut all_present = NativeGroup::new(&binary, all_present_dir.path(), 144, 2, &model, &vllm);
    all_present.early_launch = false;
    let all_present = all_present.first_serving(WORKER_DELAY);
    eprintln!(
        "start when all present: served {:.1} s after the last rank started",
        all_present.as_secs_f64()
    );
    let group = NativeGroup::new(&binary, dirs.1.path(), 140, 2, &model, &vllm);
    let f = group.scenario(WORKER_DELAY);
    println!(
        "BENCH native last_rank_to_completion_s={:.1} all_present_last_rank_to_completion_s={:.1} death_to_serving_s={:.1} lost_pod_to_serving_s={:.1} stop_s={:.1} old_last_rank_to_completion_s={:.1} old_death_to_serving_s={} worker_delay_s={:.0}",
        f.last_rank_to_completion.as_secs_f64(),
        all_present.as_secs_f64(),
        f.death_to_serving.as_secs_f64(),
        f.lost_worker_to_serving.as_secs_f64(),
        f.stop.as_secs_f64(),
        old_to_completion.as_secs_f64(),
        old_recovered.map_or("never".to_string(), |d| format!("{:.1}", d.as_secs_f64())),
        f.worker_delay.as_secs_f64()
    );
}
