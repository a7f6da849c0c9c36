//! Watching the RayCluster and its pods, turned into [`ExternalFacts`] for
//! the wait phase: the expected topology follows a scale change without a
//! restart, and every worker pod's state is at hand for the diagnosis.
//!
//! Each resource is listed, then watched from the list's resource version;
//! a watch that ends is re-issued from the last version seen, a `410 Gone`
//! or an error leads to a fresh list after a backoff (1 s doubling to
//! 30 s). API errors become notes in the facts (naming the missing
//! permission) and log lines; they never end the watch or the wait.

use crate::api::{Access, KubeContext, explain, timed};
use crate::pods::members_and_notes;
use crate::raycluster::{CLUSTER_LABEL, RayCluster};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use orchestrator_domain::ClusterConfig;
use orchestrator_domain::ExternalFacts;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Longest pause between relists after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Server-side timeout of one watch request.
const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// A change to one watched resource.
enum Change<K> {
    /// A fresh list: replaces everything known.
    Reset(Vec<K>),
    /// Added or modified.
    Applied(K),
    /// Deleted.
    Deleted(K),
    /// A request failed: the explanation.
    Failed(String),
}

enum Tagged {
    // Boxed: objects are kilobytes, the channel moves them.
    Cluster(Box<Change<RayCluster>>),
    Pod(Box<Change<Pod>>),
}

/// What the watcher knows.
#[derive(Default)]
struct State {
    cluster: Option<RayCluster>,
    pods: BTreeMap<String, Pod>,
    cluster_error: Option<String>,
    pods_error: Option<String>,
}

impl State {
    fn facts(&self, config: &ClusterConfig) -> ExternalFacts {
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let (members, mut notes) = members_and_notes(self.cluster.as_ref(), &pods);
        notes.extend(
            self.cluster_error
                .iter()
                .map(|e| format!("kubernetes: {e}")),
        );
        notes.extend(self.pods_error.iter().map(|e| format!("kubernetes: {e}")));
        ExternalFacts {
            expected: self
                .cluster
                .as_ref()
                .map(|c| config.merge(c.spec.topology())),
            members,
            notes,
        }
    }

    fn apply_cluster(&mut self, change: Change<RayCluster>) {
        match change {
            Change::Reset(mut items) => {
                self.cluster = items.pop();
                self.cluster_error = None;
            }
            Change::Applied(c) => {
                self.cluster = Some(c);
                self.cluster_error = None;
            }
            Change::Deleted(_) => self.cluster = None,
            Change::Failed(e) => self.cluster_error = Some(e),
        }
    }

    fn apply_pod(&mut self, change: Change<Pod>) {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        match change {
            Change::Reset(items) => {
                self.pods = items.into_iter().map(|p| (name(&p), p)).collect();
                self.pods_error = None;
            }
            Change::Applied(p) => {
                self.pods.insert(name(&p), p);
                self.pods_error = None;
            }
            Change::Deleted(p) => {
                self.pods.remove(&name(&p));
            }
            Change::Failed(e) => self.pods_error = Some(e),
        }
    }
}

/// Starts watching this pod's RayCluster and its pods. The first facts are
/// in the returned channel before this returns (each first list has
/// [`crate::api::REQUEST_TIMEOUT`]); errors are in their notes. The watch
/// runs until the receiver is dropped.
pub async fn watch_cluster(
    context: &KubeContext,
    config: ClusterConfig,
) -> watch::Receiver<ExternalFacts> {
    let (changes_tx, mut changes) = mpsc::channel::<Tagged>(64);
    let clusters: Api<RayCluster> = Api::namespaced(context.client.clone(), &context.namespace);
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &context.namespace);
    let field = format!("metadata.name={}", context.cluster_name);
    let label = format!("{CLUSTER_LABEL}={}", context.cluster_name);

    let first_cluster = first_list(
        context,
        &clusters,
        ListParams::default().fields(&field),
        Access::rayclusters("list"),
    )
    .await;
    let first_pods = first_list(
        context,
        &pods,
        ListParams::default().labels(&label),
        Access::core("list", "pods"),
    )
    .await;
    let mut state = State::default();
    let cluster_rv = apply_first(&mut state, first_cluster, |c| Tagged::Cluster(Box::new(c)));
    let pods_rv = apply_first(&mut state, first_pods, |p| Tagged::Pod(Box::new(p)));
    for e in [&state.cluster_error, &state.pods_error]
        .into_iter()
        .flatten()
    {
        tracing::warn!("kubernetes: {e}");
    }
    let (facts_tx, facts_rx) = watch::channel(state.facts(&config));

    tokio::spawn(list_then_watch(
        context.clone(),
        clusters,
        Selector::Field(field),
        Access::rayclusters("watch"),
        cluster_rv,
        changes_tx.clone(),
        |c| Tagged::Cluster(Box::new(c)),
    ));
    tokio::spawn(list_then_watch(
        context.clone(),
        pods,
        Selector::Label(label),
        Access::core("watch", "pods"),
        pods_rv,
        changes_tx,
        |p| Tagged::Pod(Box::new(p)),
    ));
    tokio::spawn(async move {
        let mut logged: Option<String> = None;
        loop {
            // Ends (and with it both watches) once nobody reads the facts.
            let change = tokio::select! {
                change = changes.recv() => match change {
                    Some(c) => c,
                    None => return,
                },
                () = facts_tx.closed() => return,
            };
            let mut batch = vec![change];
            while let Ok(more) = changes.try_recv() {
                batch.push(more);
            }
            for change in batch {
                match change {
                    Tagged::Cluster(c) => state.apply_cluster(*c),
                    Tagged::Pod(p) => state.apply_pod(*p),
                }
            }
            let errors = [&state.cluster_error, &state.pods_error]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if !errors.is_empty() && logged.as_deref() != Some(errors.as_str()) {
                tracing::warn!("kubernetes: {errors}");
            }
            logged = Some(errors);
            let facts = state.facts(&config);
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

/// The first list's items and resource version, or the explained error.
async fn first_list<K>(
    context: &KubeContext,
    api: &Api<K>,
    params: ListParams,
    access: Access,
) -> Result<(Vec<K>, String), String>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    timed(&context.server, access.verb, async {
        api.list(&params)
            .await
            .map(|l| (l.items, l.metadata.resource_version.unwrap_or_default()))
            .map_err(|e| {
                explain(
                    &e,
                    access,
                    &context.namespace,
                    &context.cluster_name,
                    &context.server,
                )
            })
    })
    .await
}

fn apply_first<K>(
    state: &mut State,
    first: Result<(Vec<K>, String), String>,
    tag: fn(Change<K>) -> Tagged,
) -> Option<String> {
    let (change, rv) = match first {
        Ok((items, rv)) => (Change::Reset(items), Some(rv)),
        Err(e) => (Change::Failed(e), None),
    };
    match tag(change) {
        Tagged::Cluster(c) => state.apply_cluster(*c),
        Tagged::Pod(p) => state.apply_pod(*p),
    }
    rv
}

enum Selector {
    Field(String),
    Label(String),
}

async fn list_then_watch<K>(
    context: KubeContext,
    api: Api<K>,
    selector: Selector,
    access: Access,
    mut resource_version: Option<String>,
    tx: mpsc::Sender<Tagged>,
    tag: fn(Change<K>) -> Tagged,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (list_params, watch_params) = match &selector {
        Selector::Field(f) => (
            ListParams::default().fields(f),
            WatchParams::default()
                .fields(f)
                .timeout(WATCH_TIMEOUT_SECONDS),
        ),
        Selector::Label(l) => (
            ListParams::default().labels(l),
            WatchParams::default()
                .labels(l)
                .timeout(WATCH_TIMEOUT_SECONDS),
        ),
    };
    let list_access = Access {
        verb: "list",
        ..access
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let rv = match resource_version.take() {
            Some(rv) => rv,
            None => match first_list(&context, &api, list_params.clone(), list_access).await {
                Ok((items, rv)) => {
                    if tx.send(tag(Change::Reset(items))).await.is_err() {
                        return;
                    }
                    rv
                }
                Err(e) => {
                    if tx.send(tag(Change::Failed(e))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let mut rv = rv;
        // Watch from `rv` until the server ends the stream (re-watch) or
        // something requires a fresh list.
        'watch: loop {
            let started = tokio::time::Instant::now();
            let stream = match api.watch(&watch_params, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    let text = explain(
                        &e,
                        access,
                        &context.namespace,
                        &context.cluster_name,
                        &context.server,
                    );
                    if tx.send(tag(Change::Failed(text))).await.is_err() {
                        return;
                    }
                    break 'watch;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut events = 0u32;
            loop {
                // The facts' reader is gone: end the watch now, not at its
                // server-side timeout.
                let event = tokio::select! {
                    event = stream.next() => event,
                    () = tx.closed() => return,
                };
                let Some(event) = event else { break };
                events += 1;
                let change = match event {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.resource_version().unwrap_or(rv);
                        Change::Applied(o)
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.resource_version().unwrap_or(rv);
                        Change::Deleted(o)
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => break 'watch,
                    Ok(WatchEvent::Error(status)) => {
                        let _ = tx
                            .send(tag(Change::Failed(format!(
                                "the watch of {} failed: {} ({})",
                                access.resource, status.message, status.code
                            ))))
                            .await;
                        break 'watch;
                    }
                    Err(e) => {
                        tracing::debug!("kubernetes: watch of {} ended: {e}", access.resource);
                        break 'watch;
                    }
                };
                backoff = Duration::from_secs(1);
                if tx.send(tag(change)).await.is_err() {
                    return;
                }
            }
            // A watch that ends at once with nothing (a proxy that cuts
            // it, a server that refuses) must not spin.
            if events == 0 && started.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

trait ResourceVersion {
    fn resource_version(&self) -> Option<String>;
}

impl<K: kube::Resource> ResourceVersion for K {
    fn resource_version(&self) -> Option<String> {
        self.meta().resource_version.clone()
    }
}
