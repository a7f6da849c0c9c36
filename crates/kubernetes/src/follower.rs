//! One owner object and its pods, followed into [`ExternalFacts`]: the
//! loop behind both the RayCluster watch ([`crate::watch`]) and the
//! LeaderWorkerSet group watch ([`crate::lws`]). Entry point:
//! [`follow_owner_and_pods`].
//!
//! Each resource is followed by kube-runtime's [`watcher`] (list, then
//! watch from the list's version; a re-list after `410 Gone`) with its
//! default backoff after errors, into a [`reflector`] store. API errors
//! become notes in the facts (naming the missing permission) and log
//! lines when they change; they never end the watch or the wait.

use crate::api::{Access, ApiError, KubeContext, explain};
use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use orchestrator_domain::ExternalFacts;

/// What one watched resource's stream says.
enum Seen {
    /// A list completed or an object changed: the store is current.
    Synced,
    /// The stream is (re)listing; the store still has the last list.
    Listing,
    /// A request failed, explained.
    Failed(String),
}

/// Which of the two streams an item came from.
enum Origin {
    Owner(Seen),
    Pods(Seen),
}

/// What to follow: the owner by name (the context's `cluster_name`), its
/// pods by a label selector.
pub(crate) struct Followed<F> {
    /// The owner's resource, for explaining a denied request.
    pub(crate) owner_access: fn(&'static str) -> Access,
    /// The label selector of the owner's pods.
    pub(crate) pod_labels: String,
    /// The facts of the owner (when listed), its pods and the current
    /// errors (already explained).
    pub(crate) facts: F,
}

/// The two stores and what went wrong with each stream.
struct State<K: kube::Resource<DynamicType = ()> + 'static> {
    owner: Store<K>,
    pods: Store<Pod>,
    errors: [Option<String>; 2],
    synced: [bool; 2],
}

impl<K> State<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn apply(&mut self, item: Origin) {
        let (i, seen) = match item {
            Origin::Owner(s) => (0, s),
            Origin::Pods(s) => (1, s),
        };
        match seen {
            Seen::Synced => {
                self.errors[i] = None;
                self.synced[i] = true;
            }
            Seen::Listing => {}
            Seen::Failed(e) => self.errors[i] = Some(e),
        }
    }

    /// Both first lists have completed or failed.
    fn settled(&self) -> bool {
        (0..2).all(|i| self.synced[i] || self.errors[i].is_some())
    }

    fn errors(&self) -> Vec<String> {
        self.errors.iter().flatten().cloned().collect()
    }

    fn facts<F>(&self, facts: &F) -> ExternalFacts
    where
        F: Fn(Option<&K>, &[Pod], &[String]) -> ExternalFacts,
    {
        let owner = self.owner.state().first().map(|o| o.as_ref().clone());
        let pods: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .map(|p| p.as_ref().clone())
            .collect();
        facts(owner.as_ref(), &pods, &self.errors())
    }
}

/// Starts following the owner named by the context and its pods. The
/// first facts are in the returned channel before this returns (the first
/// lists get [`crate::api::REQUEST_TIMEOUT`]); the watch runs until the
/// receiver is dropped.
pub(crate) async fn follow_owner_and_pods<K, F>(
    context: &KubeContext,
    followed: Followed<F>,
) -> tokio::sync::watch::Receiver<ExternalFacts>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Option<&K>, &[Pod], &[String]) -> ExternalFacts + Send + 'static,
{
    let owners: Api<K> = Api::namespaced(context.client.clone(), &context.namespace);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &context.namespace);
    let (owner_store, owner_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let owner_stream = follow(
        context,
        owners,
        watcher::Config::default().fields(&format!("metadata.name={}", context.cluster_name)),
        followed.owner_access,
        owner_writer,
    )
    .map(Origin::Owner);
    let pod_stream = follow(
        context,
        pods,
        watcher::Config::default().labels(&followed.pod_labels),
        |verb| Access::core(verb, "pods"),
        pod_writer,
    )
    .map(Origin::Pods);
    let mut items = Box::pin(futures_util::stream::select(owner_stream, pod_stream));
    let mut state = State {
        owner: owner_store,
        pods: pod_store,
        errors: [None, None],
        synced: [false, false],
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
        tracing::warn!("kubernetes: {}", logged.join("; "));
    }
    let facts = followed.facts;
    let (tx, rx) = tokio::sync::watch::channel(state.facts(&facts));
    tokio::spawn(async move {
        loop {
            // Ends (and with it both watches) once nobody reads the facts.
            let item = tokio::select! {
                item = items.next() => match item {
                    Some(item) => item,
                    None => return,
                },
                () = tx.closed() => return,
            };
            state.apply(item);
            // Coalesce what has already arrived.
            while let Some(Some(more)) = items.next().now_or_never() {
                state.apply(more);
            }
            let errors = state.errors();
            if !errors.is_empty() && errors != logged {
                tracing::warn!("kubernetes: {}", errors.join("; "));
            }
            logged = errors;
            let now = state.facts(&facts);
            tx.send_if_modified(|current| {
                if *current == now {
                    false
                } else {
                    *current = now;
                    true
                }
            });
        }
    });
    rx
}

/// One resource followed by a watcher with backoff into a reflector store.
fn follow<K>(
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
