//! Prints a Ray cluster's membership changes as the GCS pushes them, with
//! how long after each node's registration time the push arrived:
//! `cargo run --release -p orchestrator-ray-gcs --example watch_gcs -- 127.0.0.2:6379`

use orchestrator_ray_gcs::{MembershipChange, watch_membership};
use std::time::{SystemTime, UNIX_EPOCH};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.2:6379".to_string());
    let mut updates = watch_membership(address);
    let mut view = orchestrator_ray_gcs::ClusterView::default();
    while let Some(update) = updates.recv().await {
        update.apply_to(&mut view);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i128)
            .unwrap_or(0);
        let alive = view.alive().count();
        println!(
            "{:?}: {alive} of {} nodes alive",
            update.source,
            view.nodes.len()
        );
        for change in &update.changes {
            match change {
                MembershipChange::Joined(n) => println!(
                    "  joined {} {} gpu={} ({} ms after its start time)",
                    n.id.get(..8).unwrap_or(&n.id),
                    n.address,
                    n.resources.gpu,
                    now_ms - n.start_time_ms as i128
                ),
                MembershipChange::Died { node, reason } => {
                    println!(
                        "  died {} {} {reason:?}",
                        node.id.get(..8).unwrap_or(&node.id),
                        node.address
                    )
                }
            }
        }
    }
}
