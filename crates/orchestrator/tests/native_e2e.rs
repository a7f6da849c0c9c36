//! The native backend with real vLLM (the CPU build), no Ray: a leader and
//! a worker, each its own `orchestrator run` with `backend = "native"` on
//! its own loopback address, serving the tiny model tensor-parallel over
//! both ranks through vLLM's own multi-node mode. `cargo xtask test` runs
//! it with ORCHESTRATOR_VLLM_BIN and ORCHESTRATOR_TINY_MODEL set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::time::Duration;

fn var(name: &str) -> String {
    required_env(name, "what `cargo xtask test` sets up")
}

#[test]
#[ignore = "needs vLLM: run by `cargo xtask test`"]
fn a_late_worker_joins_a_dead_rank_and_a_lost_pod_restart_the_group_and_sigterm_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        130,
        2,
        &var("ORCHESTRATOR_TINY_MODEL"),
        &var("ORCHESTRATOR_VLLM_BIN"),
    );
    let figures = group.scenario(Duration::from_secs(20));
    eprintln!("{figures:?}");
    // The leader said why it waited, and the group's restarts are in its
    // log: rank 1's exit, then its lost heartbeat.
    let log = std::fs::read_to_string(dir.path().join("rank-0-0.log")).unwrap();
    assert!(
        log.contains("rank 1's serving process on 127.0.0.131 was killed by signal 9"),
        "{log}"
    );
    assert!(
        log.contains("no heartbeat from rank 1"),
        "the lost pod's heartbeat"
    );
    assert!(log.contains("told every rank to start generation="));
}

#[test]
#[ignore = "needs the orchestrator binary only: run by `cargo xtask test`"]
fn a_duplicate_and_an_out_of_range_rank_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // No model: the leader forms the group and supervises it.
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        135,
        2,
        "",
        "vllm",
    );
    let config = group.config(0);
    let written = std::fs::read_to_string(&config).unwrap();
    let without_model = written.replace("model = \"\"\n", "");
    std::fs::write(&config, &without_model).unwrap();
    let mut leader = std::process::Command::new(&group.binary)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![leader.id() as i32]);
    poll_until("the leader waiting", Duration::from_secs(30), || {
        status(&group.endpoints_of(0)).filter(|s| s["phase"] == "wait")
    });
    // Rank 1 registers; the group is formed.
    let worker_config = group.config(1);
    let member = |config: &std::path::Path, sets: &[&str]| {
        let mut cmd = std::process::Command::new(&group.binary);
        cmd.args(["run", "--config"]).arg(config);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd
    };
    let mut worker = member(&worker_config, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _worker_guard = Guard(vec![worker.id() as i32]);
    poll_until("the group formed", Duration::from_secs(30), || {
        status(&group.endpoints_of(0)).filter(|s| s["nodes-alive"] == 2)
    });
    // A second rank 1 (on another address) is refused: not permanently
    // (the first may be a pod on its way out), so it retries, then gives
    // up when its leader wait ends, naming both pods.
    let out = output_within(
        &mut member(
            &worker_config,
            &[
                "native.node-address=127.0.0.137",
                "endpoints-host=127.0.0.137",
                "native.leader-wait-seconds=2",
            ],
        ),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("two pods claim rank 1"), "{stderr}");
    assert!(stderr.contains("127.0.0.136"), "names the holder: {stderr}");
    // A rank the group does not have is refused at once by the member
    // itself (exit 2, a configuration error)...
    let out = output_within(
        &mut member(&worker_config, &["native.rank=2"]),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rank 2 is out of range for a group of 2"),
        "{stderr}"
    );
    // ... and by the leader when the member's group size disagrees.
    let out = output_within(
        &mut member(
            &worker_config,
            &[
                "native.rank=2",
                "native.group-size=3",
                "native.node-address=127.0.0.138",
                "endpoints-host=127.0.0.138",
            ],
        ),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("group of 3 nodes but the leader's group has 2"),
        "{stderr}"
    );
    // The first rank 1 still holds its place; both stop cleanly.
    assert_eq!(status(&group.endpoints_of(0)).unwrap()["nodes-alive"], 2);
    signal(worker.id() as i32, Sig::TERM);
    signal(leader.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    assert!(wait_exit(&mut leader, Duration::from_secs(20)).success());
}
