//! Watching the RayCluster and its pods, turned into [`ExternalFacts`] for
//! the wait phase: the expected topology follows a scale change without a
//! restart, and every worker pod's state is at hand for the diagnosis.
//! Entry point: [`watch_cluster`].
//!
//! Each resource is followed by kube-runtime's [`watcher`] (list, then
//! watch from the list's version; a re-list after `410 Gone`) with its
//! default backoff after errors, into a [`reflector`] store. API errors
//! become notes in the facts (naming the missing permission) and log
//! lines; they never end the watch or the wait.

use crate::api::{Access, ApiError, KubeContext, explain};
use crate::pods::members_and_notes;
use crate::raycluster::{CLUSTER_LABEL, RayCluster};
use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use orchestrator_domain::{ClusterConfig, ExternalFacts};

/// What one watched resource's stream says.
pub(crate) enum Seen {
    /// A list completed or an object changed: the store is current.
    Synced,
    /// The stream is (re)listing; the store still has the last list.
    Listing,
    /// A request failed, explained.
    Failed(String),
}

/// Which of the two streams an item came from.
enum Origin {
    Cluster(Seen),
    Pods(Seen),
}

/// The stores and what went wrong with each stream.
struct State {
    cluster: Store<RayCluster>,
    pods: Store<Pod>,
    cluster_error: Option<String>,
    pods_error: Option<String>,
    cluster_synced: bool,
    pods_synced: bool,
}

impl State {
    fn apply(&mut self, item: Origin) {
        let (seen, error, synced) = match item {
            Origin::Cluster(seen) => (seen, &mut self.cluster_error, &mut self.cluster_synced),
            Origin::Pods(seen) => (seen, &mut self.pods_error, &mut self.pods_synced),
        };
        match seen {
            Seen::Synced => {
                *error = None;
                *synced = true;
            }
            Seen::Listing => {}
            Seen::Failed(e) => *error = Some(e),
        }
    }

    /// Both first lists have completed or failed.
    fn settled(&self) -> bool {
        (self.cluster_synced || self.cluster_error.is_some())
            && (self.pods_synced || self.pods_error.is_some())
    }

    fn errors(&self) -> String {
        [&self.cluster_error, &self.pods_error]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn facts(&self, config: &ClusterConfig, layout_gpus: Option<f64>) -> ExternalFacts {
        let cluster = self.cluster.state().first().map(|c| c.as_ref().clone());
        let pods: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .map(|p| p.as_ref().clone())
            .collect();
        let (members, mut notes) = members_and_notes(cluster.as_ref(), &pods);
        notes.extend(
            [&self.cluster_error, &self.pods_error]
                .into_iter()
                .flatten()
                .map(|e| format!("kubernetes: {e}")),
        );
        let autoscaled = cluster
            .as_ref()
            .filter(|c| c.spec.enable_in_tree_autoscaling == Some(true));
        // With Ray's autoscaler the groups' replicas are what Ray asked for
        // so far: unless the configuration gives the layout, it comes from
        // the serve layout (TP x PP) or the groups' maxReplicas.
        let from_layout = config.nodes.is_none() && config.groups.is_empty();
        let layout = autoscaled
            .filter(|_| from_layout)
            .map(|c| (c, c.spec.autoscaled_topology(layout_gpus)));
        if let Some((c, t)) = &layout {
            let workers = t.nodes.saturating_sub(1);
            notes.push(format!(
                "RayCluster {} scales its workers with Ray's autoscaler: expecting {workers} worker{} ({}), which the head asks the autoscaler for; set [[cluster.groups]] to expect other workers",
                c.metadata.name.as_deref().unwrap_or("?"),
                if workers == 1 { "" } else { "s" },
                match layout_gpus {
                    Some(g) => format!("for the serve layout's {g} GPUs, tensor x pipeline parallel size"),
                    None => "each GPU group's maxReplicas: the serve settings name no tensor-parallel-size".to_string(),
                }
            ));
        }
        let autoscaling = autoscaled.is_some();
        let expected = match layout {
            Some((_, t)) => Some(config.merge(t)),
            None => cluster.as_ref().map(|c| config.merge(c.spec.topology())),
        };
        ExternalFacts {
            expected,
            members,
            notes,
            autoscaling,
        }
    }
}

/// One resource followed by a watcher with backoff into a reflector store.
pub(crate) fn follow<K>(
    context: &KubeContext,
    api: Api<K>,
    config: watcher::Config,
    resource: fn(&'static str) -> Access,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Seen> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (namespace, name, server) = (
        context.namespace.clone(),
        context.cluster_name.clone(),
        context.server.clone(),
    );
    let explained = move |e: watcher::Error| -> Option<String> {
        let failed = |verb, e| explain(e, resource(verb), &namespace, &name, &server);
        let error: ApiError = match e {
            watcher::Error::InitialListFailed(e) => failed("list", e),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                failed("watch", e)
            }
            // Too old: the watcher lists afresh; nothing to report.
            watcher::Error::WatchError(status) if status.code == 410 => return None,
            watcher::Error::WatchError(status) => {
                return Some(format!(
                    "the watch of {} failed: {} ({})",
                    resource("watch").resource,
                    status.message,
                    status.code
                ));
            }
            other => return Some(other.to_string()),
        };
        Some(error.to_string())
    };
    reflector::reflector(writer, watcher(api, config).default_backoff()).filter_map(move |item| {
        let seen = match item {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Some(Seen::Listing),
            Ok(_) => Some(Seen::Synced),
            Err(e) => explained(e).map(Seen::Failed),
        };
        std::future::ready(seen)
    })
}

/// Starts watching this pod's RayCluster and its pods. The first facts are
/// in the returned channel before this returns (the first lists get
/// [`crate::api::REQUEST_TIMEOUT`]); errors are in their notes. The watch
/// runs until the receiver is dropped.
pub async fn watch_cluster(
    context: &KubeContext,
    config: ClusterConfig,
) -> tokio::sync::watch::Receiver<ExternalFacts> {
    watch_cluster_for(context, config, None).await
}

/// [`watch_cluster`] for a serve layout of `layout_gpus` GPUs (tensor x
/// pipeline parallel size, when the serve settings name them): with Ray's
/// autoscaler and no configured groups, the expected workers are those
/// the layout needs ([`crate::raycluster::RayClusterSpec::autoscaled_topology`]).
pub async fn watch_cluster_for(
    context: &KubeContext,
    config: ClusterConfig,
    layout_gpus: Option<f64>,
) -> tokio::sync::watch::Receiver<ExternalFacts> {
    let clusters: Api<RayCluster> = Api::namespaced(context.client.clone(), &context.namespace);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &context.namespace);
    let (cluster_store, cluster_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let cluster_stream = follow(
        context,
        clusters,
        watcher::Config::default().fields(&format!("metadata.name={}", context.cluster_name)),
        Access::rayclusters,
        cluster_writer,
    )
    .map(Origin::Cluster);
    let pod_stream = follow(
        context,
        pods,
        watcher::Config::default().labels(&format!("{CLUSTER_LABEL}={}", context.cluster_name)),
        |verb| Access::core(verb, "pods"),
        pod_writer,
    )
    .map(Origin::Pods);
    let mut items = Box::pin(futures_util::stream::select(cluster_stream, pod_stream));
    let mut state = State {
        cluster: cluster_store,
        pods: pod_store,
        cluster_error: None,
        pods_error: None,
        cluster_synced: false,
        pods_synced: false,
    };
    let first = async {
        while !state.settled() {
            match items.next().await {
                Some(item) => state.apply(item),
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(crate::api::REQUEST_TIMEOUT, first).await;
    let mut logged = state.errors();
    if !logged.is_empty() {
        tracing::warn!("kubernetes: {logged}");
    }
    let (facts_tx, facts_rx) = tokio::sync::watch::channel(state.facts(&config, layout_gpus));
    tokio::spawn(async move {
        loop {
            // Ends (and with it both watches) once nobody reads the facts.
            let item = tokio::select! {
                item = items.next() => match item {
                    Some(item) => item,
                    None => return,
                },
                () = facts_tx.closed() => return,
            };
            state.apply(item);
            // Coalesce what has already arrived.
            while let Some(Some(more)) = items.next().now_or_never() {
                state.apply(more);
            }
            let errors = state.errors();
            if !errors.is_empty() && errors != logged {
                tracing::warn!("kubernetes: {errors}");
            }
            logged = errors;
            let facts = state.facts(&config, layout_gpus);
            facts_tx.send_if_modified(|current| {
                if *current == facts {
                    false
                } else {
                    *current = facts;
                    true
                }
            });
        }
    });
    facts_rx
}
