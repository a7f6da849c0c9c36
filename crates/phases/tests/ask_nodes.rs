//! The wait asks each node itself before it says ready: against the
//! stand-in GCS, a node whose raylet port accepts but never answers (a
//! frozen raylet, as the kernel keeps accepting for it) is not counted
//! until a raylet answers there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::Topology;
use orchestrator_fake_gcs::{StandIn, StandInRaylet, synthetic_node};
use orchestrator_phases::membership::RayGcs;
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::wait::{WaitError, WaitSpec, wait_for_cluster};
use orchestrator_policy_host::ReadinessPolicy;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node_count_policy() -> ReadinessPolicy {
    let host = policies::host(&Default::default()).unwrap();
    policies::readiness(&host, &PolicyRef::parse("builtin:node-count"), "test").unwrap()
}

fn spec(gcs: &StandIn, ask: Option<Duration>, timeout: Duration) -> WaitSpec {
    WaitSpec {
        health: None,
        source: Arc::new(RayGcs::new(gcs.address())),
        expected: Topology {
            nodes: 2,
            ..Topology::default()
        },
        timeout,
        params: vec![],
        diagnostics: vec![],
        facts: None,
        status: None,
        request_resources: false,
        ask_nodes: ask,
    }
}

/// A head whose raylet is at 127.0.0.2:`head_port` and a worker whose
/// raylet is at 127.0.0.3:`worker_port`, registered with `gcs`.
fn register_head_and_worker(gcs: &StandIn, head_port: u16, worker_port: u16) {
    let mut head = synthetic_node(0);
    head.node_manager_address = "127.0.0.2".into();
    head.node_manager_port = head_port.into();
    let mut worker = synthetic_node(1);
    worker.node_manager_address = "127.0.0.3".into();
    worker.node_manager_port = worker_port.into();
    gcs.register(vec![head, worker]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raylet_does_not_answer_is_not_counted_until_it_does() {
    let gcs = StandIn::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let head_raylet = StandInRaylet::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    // Accepts connections (the kernel does) and never answers.
    let frozen = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let frozen_at = frozen.local_addr().unwrap();
    register_head_and_worker(&gcs, head_raylet.address().port(), frozen_at.port());

    // The GCS's word alone: ready.
    let ready = wait_for_cluster(
        &spec(&gcs, None, Duration::from_secs(5)),
        &mut node_count_policy(),
    )
    .await
    .expect("ready by the GCS alone");
    assert_eq!(ready.snapshot.nodes.iter().filter(|n| n.alive).count(), 2);

    // Asking the nodes: not ready, and the diagnosis says why.
    let asking = spec(
        &gcs,
        Some(Duration::from_millis(300)),
        Duration::from_secs(3),
    );
    let err = wait_for_cluster(&asking, &mut node_count_policy())
        .await
        .expect_err("a silent node is not counted");
    // node-count itself gives up at the deadline.
    assert!(
        matches!(err, WaitError::Timeout { .. } | WaitError::Failed { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("nodes: 1 of 2 expected alive"), "{text}");
    assert!(
        text.contains(&format!(
            "node 127.0.0.3 is alive in the GCS but not counted: its raylet at {frozen_at} did not answer within 0.3 s"
        )),
        "{text}"
    );

    // It answers again during a wait: ready within about a second.
    let waiting = tokio::spawn(async move {
        let spec = spec(
            &gcs,
            Some(Duration::from_millis(300)),
            Duration::from_secs(20),
        );
        let result = wait_for_cluster(&spec, &mut node_count_policy()).await;
        (result, Instant::now(), gcs)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "ready while a node was silent");
    drop(frozen);
    let thawed = StandInRaylet::start(frozen_at).await.unwrap();
    let answering_since = Instant::now();
    let (result, at, _gcs) = waiting.await.unwrap();
    let ready = result.expect("ready once the node answers");
    assert_eq!(ready.snapshot.nodes.iter().filter(|n| n.alive).count(), 2);
    let after = at.duration_since(answering_since);
    assert!(
        after < Duration::from_secs(3),
        "ready {after:?} after it answered"
    );
    drop(thawed);
}

/// In a small cluster, answers are renewed in the background before they
/// stop standing: a node that answered and then went silent is found
/// while the wait goes on (no ready decision needed to ask it again), and
/// the node that answers is asked every couple of seconds, so the
/// confirmation before ready has nothing left to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_renewed_while_waiting_and_a_node_gone_silent_is_named() {
    let gcs = StandIn::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let head_raylet = StandInRaylet::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let worker_raylet = StandInRaylet::start("127.0.0.3:0".parse().unwrap())
        .await
        .unwrap();
    let worker_at = worker_raylet.address();
    register_head_and_worker(&gcs, head_raylet.address().port(), worker_at.port());
    // Three expected, two there: the policy never says ready.
    let mut waiting = spec(
        &gcs,
        Some(Duration::from_millis(300)),
        Duration::from_secs(6),
    );
    waiting.expected.nodes = 3;
    let wait = tokio::spawn(async move {
        let result = wait_for_cluster(&waiting, &mut node_count_policy()).await;
        (result, gcs)
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        worker_raylet.calls() >= 1,
        "the worker was asked as it was seen"
    );
    // The worker's raylet goes away after its first answer.
    drop(worker_raylet);
    let (result, _gcs) = wait.await.unwrap();
    let text = result.expect_err("three nodes were expected").to_string();
    assert!(
        text.contains("node 127.0.0.3 is alive in the GCS but not counted"),
        "{text}"
    );
    // Asked at the start, then renewed about every 2 s over 6 s.
    let calls = head_raylet.calls();
    assert!(
        (3..=5).contains(&calls),
        "{calls} calls to the head's raylet"
    );
}

/// Asking nodes again reuses the connection to their raylet: one
/// connection, however many nodes it serves and however often they are
/// asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_keep_one_connection_per_raylet() {
    use orchestrator_phases::membership::MembershipSource;
    let gcs = StandIn::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let raylet = StandInRaylet::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            let mut n = synthetic_node(i);
            n.node_manager_address = "127.0.0.2".into();
            n.node_manager_port = raylet.address().port().into();
            n
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| hex_id(&n.node_id)).collect();
    gcs.register(nodes);
    let source = RayGcs::new(gcs.address());
    for round in 1..=3 {
        let silent = source
            .silent_nodes(&ids, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(silent.is_empty(), "round {round}: {silent:?}");
        assert_eq!(raylet.calls(), 3 * round, "one call a node a round");
    }
    assert_eq!(raylet.connections(), 1, "one connection for every ask");
}

fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
