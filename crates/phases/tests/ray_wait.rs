//! The start and wait phases against real Ray 2.60 (started here on
//! 127.0.0.x, stopped by process group). `cargo xtask test` runs these with
//! `ORCHESTRATOR_RAY_BIN` pointing at the pinned venv.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::ray_node::{RayNode, become_subreaper, group_members};
use orchestrator_phases::wait::{WaitError, WaitSpec, wait_for_cluster};
use orchestrator_policy_host::types::Topology;
use orchestrator_policy_host::{HostConfig, Plugin, PluginSource, PolicyHost, World};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ray_bin() -> String {
    std::env::var("ORCHESTRATOR_RAY_BIN").expect(
        "ORCHESTRATOR_RAY_BIN must point at Ray 2.60's `ray`; `cargo xtask test` sets it up",
    )
}

fn node_count_policy() -> Plugin {
    let host = PolicyHost::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .unwrap();
    host.load(
        World::Readiness,
        &PluginSource::Builtin("node-count".into()),
    )
    .unwrap()
}

/// Fast death detection by the GCS, no usage stats.
fn env() -> Vec<(String, String)> {
    [
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_health_check_initial_delay_ms", "1000"),
        ("RAY_health_check_period_ms", "500"),
        ("RAY_health_check_timeout_ms", "500"),
        ("RAY_health_check_failure_threshold", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `ray start` argv for node `i` of a test cluster whose head is at
/// 127.0.0.`base` with GCS `port`.
fn argv(base: u8, port: u16, i: u8) -> Vec<String> {
    let mut a = vec![ray_bin(), "start".to_string()];
    if i == 0 {
        a.push("--head".into());
        a.push(format!("--port={port}"));
        a.push(format!("--temp-dir=/tmp/ray-test-{port}"));
    } else {
        a.push(format!("--address=127.0.0.{base}:{port}"));
    }
    let agent = port as u32 * 7 % 20000 + 40000 + u32::from(i);
    a.extend([
        format!("--node-ip-address=127.0.0.{}", base + i),
        "--num-cpus=1".into(),
        "--num-gpus=1".into(),
        "--memory=500000000".into(),
        "--object-store-memory=80000000".into(),
        format!("--dashboard-agent-listen-port={agent}"),
        format!("--metrics-export-port={}", agent + 100),
        "--disable-usage-stats".into(),
    ]);
    a
}

/// Kills the process groups of the nodes a test started if the test fails
/// before stopping them (a failed test must not leave Ray running).
struct Cleanup(std::sync::Mutex<Vec<i32>>);

impl Cleanup {
    fn new() -> Self {
        Self(std::sync::Mutex::new(vec![]))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pgid in self.0.lock().map(|v| v.clone()).unwrap_or_default() {
            if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

async fn start(cleanup: &Cleanup, base: u8, port: u16, i: u8) -> RayNode {
    let label = if i == 0 {
        "head".to_string()
    } else {
        format!("worker-{i}")
    };
    let node = RayNode::start(
        &label,
        &argv(base, port, i),
        &env(),
        Duration::from_secs(120),
    )
    .await
    .expect("ray start");
    cleanup.0.lock().unwrap().push(node.pgid());
    node
}

async fn stop_all(nodes: &[&RayNode]) {
    for n in nodes {
        assert!(
            n.stop(Duration::from_secs(5)).await,
            "{} stopped",
            n.label()
        );
        assert!(
            group_members(n.pgid()).is_empty(),
            "no process of {} left",
            n.label()
        );
    }
}

fn spec(base: u8, port: u16, nodes: u32, timeout: Duration) -> WaitSpec {
    WaitSpec {
        address: format!("127.0.0.{base}:{port}"),
        expected: Topology {
            nodes,
            ..Topology::default()
        },
        timeout,
        params: vec![],
        diagnostics: vec![],
        facts: None,
        status: None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn late_worker_is_seen_within_100_ms_of_its_registration() {
    let _ = become_subreaper();
    let cleanup = Cleanup::new();
    let (base, port) = (20, 6420);
    let head = start(&cleanup, base, port, 0).await;
    let mut policy = node_count_policy();
    let spec = spec(base, port, 2, Duration::from_secs(60));
    let waiting = tokio::spawn(async move {
        let ready = wait_for_cluster(&spec, &mut policy).await;
        (ready, now_ms())
    });
    // The worker joins late: the wait must keep waiting until it does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "ready before the worker joined");
    let worker = start(&cleanup, base, port, 1).await;
    let (ready, decided_ms) = waiting.await.unwrap();
    let ready = ready.expect("ready");
    let last = ready
        .snapshot
        .nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| n.start_time_ms)
        .max()
        .unwrap();
    let delay = decided_ms.saturating_sub(last);
    eprintln!("ready decided {delay} ms after the last registration");
    assert!(
        delay <= 100,
        "decided {delay} ms after the worker registered"
    );
    assert_eq!(ready.snapshot.nodes.iter().filter(|n| n.alive).count(), 2);
    stop_all(&[&worker, &head]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn killed_worker_turns_dead_and_the_policy_sees_it() {
    let _ = become_subreaper();
    let cleanup = Cleanup::new();
    let (base, port) = (30, 6430);
    let head = start(&cleanup, base, port, 0).await;
    let worker = start(&cleanup, base, port, 1).await;
    // Expect 3 nodes so the wait goes on; kill the worker's raylet.
    let mut policy = node_count_policy();
    let spec = spec(base, port, 3, Duration::from_secs(12));
    let waiting = tokio::spawn(async move { wait_for_cluster(&spec, &mut policy).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raylet = worker
        .daemons()
        .iter()
        .find(|d| d.name == "raylet")
        .expect("raylet")
        .pid;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(raylet).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(2), worker.exited())
        .await
        .expect("exit seen");
    assert_eq!(exited.name, "raylet");
    match waiting.await.unwrap() {
        // The policy fails at the deadline (or the host times out): either
        // way the diagnosis shows the death.
        Err(WaitError::Timeout { diagnosis }) | Err(WaitError::Failed { diagnosis, .. }) => {
            let text = diagnosis.to_string();
            let dead: Vec<_> = diagnosis.nodes.iter().filter(|n| !n.alive).collect();
            assert_eq!(dead.len(), 1, "{text}");
            assert_eq!(dead[0].address, format!("127.0.0.{}", base + 1));
            let reason = diagnosis.last_reason.clone().unwrap_or_default();
            assert!(
                reason.contains("1 of 3 nodes alive") && reason.contains("dead:"),
                "the policy saw the death: {reason}"
            );
            assert!(text.contains("dead:  127.0.0.31"), "{text}");
        }
        Err(other) => panic!("expected a timeout with a dead node, got: {other}"),
        Ok(ready) => panic!("expected a timeout, got ready: {ready:?}"),
    }
    stop_all(&[&worker, &head]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn gcs_not_up_yet_then_up() {
    let _ = become_subreaper();
    let cleanup = Cleanup::new();
    let (base, port) = (40, 6440);
    let mut policy = node_count_policy();
    let spec = spec(base, port, 1, Duration::from_secs(90));
    let waiting = tokio::spawn(async move { wait_for_cluster(&spec, &mut policy).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished());
    let head = start(&cleanup, base, port, 0).await;
    let ready = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("ready soon after the GCS came up")
        .unwrap()
        .expect("ready");
    assert!(ready.snapshot.nodes[0].is_head);
    stop_all(&[&head]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn wrong_gcs_address_fails_at_the_deadline_naming_it() {
    let mut policy = node_count_policy();
    let spec = spec(49, 1, 1, Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = wait_for_cluster(&spec, &mut policy)
        .await
        .expect_err("no GCS there");
    assert!(started.elapsed() < Duration::from_secs(6));
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.49:1") && text.contains("never answered"),
        "{text}"
    );
    assert!(
        text.contains("Connection refused"),
        "names the last error: {text}"
    );
}
