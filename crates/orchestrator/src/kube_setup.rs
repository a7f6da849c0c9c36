//! Kubernetes awareness for `run` on the head: connect, record Events,
//! watch the RayCluster. Every failure is a warning; the wait goes on from
//! the GCS and the configuration alone.

use orchestrator_kubernetes::{RateLimit, connect, record_events, watch_cluster};
use orchestrator_phases::config::Config;
use orchestrator_phases::facts::ExternalFacts;
use orchestrator_phases::status::Status;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long finding the pod and the first lists may take before the wait
/// starts without them.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts connecting in the background; the handle yields the facts
/// channel, or `None` when Kubernetes cannot be used (already logged).
pub fn spawn(
    config: &Config,
    status: &Arc<Status>,
) -> JoinHandle<Option<watch::Receiver<ExternalFacts>>> {
    let settings = config.kubernetes.clone();
    let cluster = config.cluster.clone();
    // Subscribe now, so the events of the start phase are queued while
    // the client connects.
    let events = settings.events.then(|| status.subscribe_events());
    tokio::spawn(async move {
        let setup = async {
            let context = match connect(&settings).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "kubernetes: {e}; the wait goes on from the GCS and the configuration alone"
                    );
                    return None;
                }
            };
            tracing::info!(
                server = %context.server,
                namespace = %context.namespace,
                pod = %context.pod_name,
                raycluster = %context.cluster_name,
                "kubernetes: watching the RayCluster"
            );
            if let Some(events) = events {
                let limit = RateLimit::new(
                    settings.event_burst,
                    Duration::from_secs(settings.event_interval_seconds),
                    Instant::now(),
                );
                tokio::spawn(record_events(context.clone(), events, limit));
            }
            let facts = watch_cluster(&context, cluster).await;
            if let Some(t) = &facts.borrow().expected {
                tracing::info!(
                    nodes = t.nodes,
                    gpus = t.gpus,
                    groups = t.groups.len(),
                    "kubernetes: expected topology from RayCluster {}",
                    context.cluster_name
                );
            }
            Some(facts)
        };
        match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
            Ok(facts) => facts,
            Err(_) => {
                tracing::warn!(
                    "kubernetes: no answer from the API server in {} s; the wait goes on from the GCS and the configuration alone",
                    SETUP_TIMEOUT.as_secs()
                );
                None
            }
        }
    })
}
