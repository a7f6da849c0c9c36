//! Scale from zero against Ray's real autoscaler: a head whose GPU worker
//! group starts with no node asks Ray's autoscaler for the layout while it
//! waits; the autoscaler (Ray's monitor with its fake multi-node provider,
//! `RAY_FAKE_CLUSTER=1`, which starts real raylets on this machine) starts
//! the worker, it joins, the server (the stand-in vLLM) serves; at stop
//! the request is withdrawn and nothing is left running.
//!
//! Ray's fake provider starts its raylets on the address Ray detects for
//! the machine; `fixtures/autoscaler/loopback_provider.py` subclasses it
//! so that they start on a 127.0.0.x address, as every Ray node of these
//! tests does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn a_worker_group_starting_at_zero_is_started_by_rays_autoscaler_and_serves() {
    let (head_ip, worker_ip) = ("127.0.0.160", "127.0.0.161");
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoscaler");
    let FromZeroHead {
        config,
        endpoints,
        gcs,
        temp,
        ..
    } = FromZeroHead::write(
        dir.path(),
        head_ip,
        worker_ip,
        &fixtures,
        true,
        Serving::StandIn,
    );
    let started = Instant::now();
    let mut head = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Captured::stderr_of(&mut head);
    let _guard = Guard(vec![head.id() as i32]);

    // No worker at first: the head asks for one.
    log.wait_for(
        "asked Ray's autoscaler for the layout (the head, then the expected workers): 1 x {CPU: 1, GPU: 1}, 1 x {GPU: 1}",
        Duration::from_secs(60),
    );
    let address = format!("{head_ip}:{gcs}");
    assert_eq!(
        gcs_nodes(&address).iter().filter(|n| n.alive).count(),
        1,
        "only the head at first"
    );
    // Ray's autoscaler starts it, it joins, the server serves.
    let s = poll_until("ready", Duration::from_secs(150), || {
        status(&format!("127.0.0.1:{endpoints}")).filter(|s| s["ready"] == true)
    });
    let ready_after = started.elapsed().as_secs_f64();
    assert_eq!(s["nodes-alive"], 2, "{s}");
    let worker = gcs_nodes(&address)
        .into_iter()
        .find(|n| !n.is_head && n.alive)
        .expect("a worker joined");
    assert_eq!(
        worker.address, worker_ip,
        "the autoscaler's node runs on loopback"
    );
    assert_eq!(worker.resources.gpu, 1.0, "{worker:?}");
    // Started by Ray's autoscaler: its provider names the nodes it makes
    // (the head is ...00000, its first worker ...00001).
    assert_eq!(
        worker.id,
        format!("{}1", &FAKE_HEAD_NODE_ID[..FAKE_HEAD_NODE_ID.len() - 1]),
        "{worker:?}"
    );
    eprintln!("from zero workers to ready: {ready_after:.1} s");

    // At stop the request is withdrawn (the GCS goes with the head) and
    // every process, the autoscaler's worker included, is gone.
    signal(head.id() as i32, Sig::TERM);
    let out = wait_exit(&mut head, Duration::from_secs(60));
    assert!(out.success(), "{}", log.text());
    assert!(
        log.text()
            .contains("withdrew the capacity asked of Ray's autoscaler"),
        "{}",
        log.text()
    );
    assert_nothing_left(&[head_ip, worker_ip, &temp, &stand_in_vllm_script(dir.path())]);
}
