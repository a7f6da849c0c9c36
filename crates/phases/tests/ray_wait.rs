//! The start and wait phases against real Ray 2.60 (started here on
//! 127.0.0.x, stopped by process group). `cargo xtask test` runs these with
//! `ORCHESTRATOR_RAY_BIN` pointing at the pinned venv.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::Topology;
use orchestrator_phases::lifecycle::local_ray_env;
use orchestrator_phases::membership::RayGcs;
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::start::RayNode;
use orchestrator_phases::start::ray_node::group_members;
use orchestrator_phases::supervision::become_subreaper;
use orchestrator_phases::wait::{WaitError, WaitSpec, wait_for_cluster};
use orchestrator_policy_host::ReadinessPolicy;
use orchestrator_test_support::{GroupGuard, free_port, now_ms, ray_bin};
use std::sync::Arc;
use std::time::Duration;

fn node_count_policy() -> ReadinessPolicy {
    let host = policies::host(&Default::default()).unwrap();
    policies::readiness(&host, &PolicyRef::parse("builtin:node-count"), "test").unwrap()
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

async fn start(cleanup: &GroupGuard, base: u8, port: u16, i: u8) -> RayNode {
    let label = if i == 0 {
        "head".to_string()
    } else {
        format!("worker-{i}")
    };
    let node = RayNode::start(
        &label,
        &argv(base, port, i),
        &local_ray_env(),
        Duration::from_secs(120),
        None,
    )
    .await
    .expect("ray start");
    cleanup.add(node.pgid());
    node
}

async fn stop_all(nodes: &[&RayNode]) {
    for n in nodes {
        assert!(
            n.stop(Duration::from_secs(5), None).await,
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
        health: None,
        source: Arc::new(RayGcs::new(format!("127.0.0.{base}:{port}"))),
        expected: Topology {
            nodes,
            ..Topology::default()
        },
        timeout,
        params: vec![],
        diagnostics: vec![],
        facts: None,
        status: None,
        request_resources: false,
        ask_nodes: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn a_late_worker_is_waited_for_and_then_seen() {
    let _ = become_subreaper();
    let cleanup = GroupGuard::default();
    let (base, port) = (20, free_port());
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
    // How soon is `cargo xtask bench wait`'s to measure; here: not before.
    assert!(
        decided_ms >= last,
        "decided at {decided_ms} before the worker registered at {last}"
    );
    eprintln!(
        "ready decided {} ms after the last registration",
        decided_ms - last
    );
    assert_eq!(ready.snapshot.nodes.iter().filter(|n| n.alive).count(), 2);
    stop_all(&[&worker, &head]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn killed_worker_turns_dead_and_the_policy_sees_it() {
    let _ = become_subreaper();
    let cleanup = GroupGuard::default();
    let (base, port) = (30, free_port());
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
    orchestrator_test_support::signal(raylet, orchestrator_test_support::Sig::KILL);
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
    let cleanup = GroupGuard::default();
    let (base, port) = (40, free_port());
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
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        wait_for_cluster(&spec, &mut policy),
    )
    .await
    .expect("ends at its deadline, not later")
    .expect_err("no GCS there");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
async fn the_expected_workers_are_asked_of_rays_autoscaler_while_waiting() {
    let _ = become_subreaper();
    let cleanup = GroupGuard::default();
    let (base, port) = (56, free_port());
    let head = start(&cleanup, base, port, 0).await;
    let address = format!("127.0.0.{base}:{port}");
    // Two GPU workers expected (a group starting from zero replicas): the
    // wait asks for them instead of only waiting.
    let mut spec = spec(base, port, 3, Duration::from_secs(4));
    spec.expected.groups = vec![orchestrator_domain::NodeGroup {
        name: "gpu-group".into(),
        replicas: 2,
        cpus_per_node: 0.0,
        gpus_per_node: 1.0,
    }];
    spec.request_resources = true;
    let mut policy = node_count_policy();
    let waited = wait_for_cluster(&spec, &mut policy).await;
    assert!(waited.is_err(), "no worker came: the wait times out");

    let gcs = orchestrator_ray_gcs::GcsClient::connect(&address, Duration::from_secs(5))
        .await
        .unwrap();
    let gpu = |n: f64| std::collections::BTreeMap::from([("GPU".to_string(), n)]);
    // What autoscaler v2 reads: the GCS's cluster resource constraint.
    // The head (1 CPU, 1 GPU) first: the autoscaler packs the request
    // onto the nodes there are, so the head's GPU must not count for a
    // worker's.
    let head_bundle =
        std::collections::BTreeMap::from([("CPU".to_string(), 1.0), ("GPU".to_string(), 1.0)]);
    assert_eq!(
        gcs.requested_resources().await.unwrap(),
        vec![head_bundle, gpu(1.0), gpu(1.0)]
    );
    // What autoscaler v1 reads, read the way its monitor does (Ray's own
    // GCS client, the internal KV key, no namespace).
    let python = std::path::Path::new(&ray_bin()).with_file_name("python");
    let read_v1 = || {
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                &format!(
                    "import json, ray._raylet as r; v = r.GcsClient(address='{address}').internal_kv_get(b'autoscaler_resource_request', None); print(json.dumps(json.loads(v)))"
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        read_v1(),
        r#"[{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}]"#
    );

    // Withdrawn (what the lifecycle does at stop).
    gcs.request_resources(&[]).await.unwrap();
    assert!(gcs.requested_resources().await.unwrap().is_empty());
    assert_eq!(read_v1(), "[]");
    stop_all(&[&head]).await;
}
