//! Kubernetes awareness for the node that decides readiness (a Ray head,
//! or a native group's leader): connect, record Events on its pod, follow
//! its owner (the RayCluster, or the LeaderWorkerSet group) and the
//! owner's pods. Every failure is a warning; the wait goes on from the
//! membership source and the configuration alone. Entry point: [`spawn`].

use crate::endpoints::Status;
use orchestrator_domain::{ClusterConfig, ExternalFacts};
use orchestrator_kubernetes::{
    KubeContext, KubeError, KubernetesConfig, RateLimit, connect, lws, record_events,
    watch_cluster_for,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long finding the pod and the first lists may take before the wait
/// starts without them.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The object whose pods form the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// KubeRay's RayCluster this head belongs to (by the pod's
    /// `ray.io/cluster` label).
    RayCluster {
        /// The configured topology, merged with the RayCluster's.
        cluster: ClusterConfig,
        /// The serve layout's GPUs (tensor x pipeline parallel size) when
        /// the serve settings name them.
        layout_gpus: Option<f64>,
    },
    /// The LeaderWorkerSet group this leader heads (by the pod's
    /// `leaderworkerset.sigs.k8s.io/*` labels).
    LeaderWorkerSet,
}

impl Owner {
    fn source(&self) -> &'static str {
        match self {
            Self::RayCluster { .. } => "the GCS",
            Self::LeaderWorkerSet => "the rendezvous",
        }
    }

    /// Finds this pod's owner: the client and, for a group, its index.
    async fn connect(
        &self,
        settings: &KubernetesConfig,
    ) -> Result<(KubeContext, Option<String>), KubeError> {
        match self {
            Self::RayCluster { .. } => connect(settings).await.map(|c| (c, None)),
            Self::LeaderWorkerSet => lws::connect_group(settings)
                .await
                .map(|g| (g.context, Some(g.group_index))),
        }
    }

    /// Follows the owner and its pods.
    async fn follow(
        self,
        context: KubeContext,
        group_index: Option<String>,
    ) -> watch::Receiver<ExternalFacts> {
        match self {
            Self::RayCluster {
                cluster,
                layout_gpus,
            } => {
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
                facts
            }
            Self::LeaderWorkerSet => {
                let group = lws::GroupContext {
                    context,
                    group_index: group_index.unwrap_or_else(|| "0".into()),
                };
                lws::watch_group(&group).await
            }
        }
    }
}

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

/// Starts connecting in the background: Events on this pod from now on
/// (queued while the client connects), then the owner's facts.
pub(crate) fn spawn(settings: &KubernetesConfig, owner: Owner, status: &Arc<Status>) -> KubeHandle {
    let settings = settings.clone();
    // Subscribe now, so the events of the start phase are queued while
    // the client connects.
    let events = settings.events.then(|| status.subscribe_events());
    let recorder_slot: Arc<Mutex<Option<JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&recorder_slot);
    let facts = tokio::spawn(async move {
        let source = owner.source();
        let setup = async {
            let (context, group_index) = match owner.connect(&settings).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        "kubernetes: {e}; the wait goes on from {source} and the configuration alone"
                    );
                    return None;
                }
            };
            tracing::info!(
                server = %context.server,
                namespace = %context.namespace,
                pod = %context.pod_name,
                owner = %context.cluster_name,
                group = group_index.as_deref().unwrap_or("-"),
                "kubernetes: following the owner's pods"
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
            Some(owner.follow(context, group_index).await)
        };
        match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
            Ok(facts) => facts,
            Err(_) => {
                tracing::warn!(
                    "kubernetes: no answer from the API server in {} s; the wait goes on from {source} and the configuration alone",
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
