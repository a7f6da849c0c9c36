//! Kubernetes awareness for the head: connect, record Events, watch the
//! RayCluster. Every failure is a warning; the wait goes on from the GCS
//! and the configuration alone. Entry point: [`spawn`].

use crate::endpoints::Status;
use orchestrator_domain::{ClusterConfig, ExternalFacts};
use orchestrator_kubernetes::{
    KubernetesConfig, RateLimit, connect, record_events, watch_cluster_for,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long finding the pod and the first lists may take before the wait
/// starts without them.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Kubernetes awareness started by [`spawn`].
pub struct KubeHandle {
    /// Yields the facts channel, or `None` when Kubernetes cannot be used
    /// (already logged). Taken by the wait phase.
    pub facts: Option<JoinHandle<Option<watch::Receiver<ExternalFacts>>>>,
    recorder: Arc<Mutex<Option<JoinHandle<()>>>>,
    status: Arc<Status>,
}

impl KubeHandle {
    /// Closes the event queue and gives the recorder up to `limit` to send
    /// what is queued.
    pub async fn flush(self, limit: Duration) {
        self.status.close_events();
        let recorder = match self.recorder.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(recorder) = recorder
            && tokio::time::timeout(limit, recorder).await.is_err()
        {
            tracing::warn!("kubernetes: the last events were not all sent");
        }
    }
}

/// Starts connecting in the background.
/// `layout_gpus` is the serve layout's GPUs (tensor x pipeline parallel
/// size) when the serve settings name them.
pub fn spawn(
    settings: &KubernetesConfig,
    cluster: &ClusterConfig,
    layout_gpus: Option<f64>,
    status: &Arc<Status>,
) -> KubeHandle {
    let settings = settings.clone();
    let cluster = cluster.clone();
    // Subscribe now, so the events of the start phase are queued while
    // the client connects.
    let events = settings.events.then(|| status.subscribe_events());
    let recorder_slot: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&recorder_slot);
    let facts = tokio::spawn(async move {
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
                let recorder = tokio::spawn(record_events(context.clone(), events, limit));
                match slot.lock() {
                    Ok(mut s) => *s = Some(recorder),
                    Err(poisoned) => *poisoned.into_inner() = Some(recorder),
                }
            }
            let facts = watch_cluster_for(&context, cluster, layout_gpus).await;
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
    });
    KubeHandle {
        facts: Some(facts),
        recorder: recorder_slot,
        status: Arc::clone(status),
    }
}
