//! The stand-in GCS against the orchestrator's real membership client: what
//! the client reads from it is what was registered, killed and why, in
//! batches no larger than Ray's publish batch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_fake_gcs::{PUBLISH_BATCH, StandIn, synthetic_node};
use orchestrator_ray_gcs::{MembershipChange, UpdateSource, watch_membership};
use std::time::Duration;

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<orchestrator_ray_gcs::MembershipUpdate>,
) -> orchestrator_ray_gcs::MembershipUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an update within 10 s")
        .expect("the watcher runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_client_follows_registrations_and_deaths() {
    let gcs = StandIn::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    gcs.register(vec![synthetic_node(0)]);
    let mut rx = watch_membership(gcs.address());

    let mut view = orchestrator_ray_gcs::ClusterView::default();
    let first = next(&mut rx).await;
    assert!(
        matches!(first.source, UpdateSource::Snapshot),
        "{:?}",
        first.source
    );
    first.apply_to(&mut view);
    assert_eq!(view.nodes.len(), 1);
    assert!(view.nodes[0].is_head);
    assert_eq!(gcs.subscribers(), 1);

    // More registrations than one poll reply carries.
    let workers = PUBLISH_BATCH as u32 + 500;
    gcs.register((1..=workers).map(synthetic_node).collect());
    let mut joined = 0;
    let mut largest = 0;
    while joined < workers as usize {
        let update = next(&mut rx).await;
        assert!(matches!(update.source, UpdateSource::Push));
        assert!(update.view.is_none(), "a push carries only its changes");
        update.apply_to(&mut view);
        largest = largest.max(update.changes.len());
        joined += update
            .changes
            .iter()
            .filter(|c| matches!(c, MembershipChange::Joined(_)))
            .count();
    }
    assert_eq!(joined, workers as usize);
    assert!(
        largest <= PUBLISH_BATCH,
        "a poll reply carries at most {PUBLISH_BATCH}"
    );

    gcs.kill(&[synthetic_node(7).node_id], "stand-in says so");
    let update = next(&mut rx).await;
    update.apply_to(&mut view);
    match update.changes.as_slice() {
        [MembershipChange::Died { node, reason }] => {
            assert_eq!(node.hostname, "vllm-worker-gpu-00007");
            assert_eq!(node.resources.gpu, 8.0);
            assert_eq!(reason.as_deref(), Some("stand-in says so"));
        }
        other => panic!("expected one death, got {other:?}"),
    }
    assert_eq!(view.alive().count(), workers as usize);
    assert_eq!(view.nodes.len(), workers as usize + 1);
    // The view built from pushes is the one a fresh snapshot gives.
    let mut fresh_rx = watch_membership(gcs.address());
    let fresh = next(&mut fresh_rx).await;
    assert_eq!(fresh.view.as_ref(), Some(&view));
    assert_eq!(gcs.alive(), workers as usize);
}
