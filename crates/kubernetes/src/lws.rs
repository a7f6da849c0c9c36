//! The native backend's leader on a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1):
//! its group's size from the LeaderWorkerSet, and the state of every
//! worker pod of its group, as [`ExternalFacts`] for the wait (a worker pod
//! whose IP has not registered with the leader is named with what
//! Kubernetes says about it, as for a RayCluster's workers). Entry point:
//! [`watch_group`].

use crate::api::{Access, KubeContext, KubeError, client_for, read_pod};
use crate::config::KubernetesConfig;
use crate::follower::{Followed, follow_owner_and_pods};
use crate::pods::describe_pod;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orchestrator_domain::{ExternalFacts, MemberState, Topology};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The label naming a pod's LeaderWorkerSet.
pub const NAME_LABEL: &str = "leaderworkerset.sigs.k8s.io/name";
/// The label with a pod's group index (its replica of the set).
pub const GROUP_INDEX_LABEL: &str = "leaderworkerset.sigs.k8s.io/group-index";
/// The label with a pod's index in its group (0: the leader).
pub const WORKER_INDEX_LABEL: &str = "leaderworkerset.sigs.k8s.io/worker-index";

/// A `LeaderWorkerSet`, the fields the leader reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LeaderWorkerSet {
    /// Name, namespace.
    pub metadata: ObjectMeta,
    /// The desired groups.
    pub spec: LeaderWorkerSetSpec,
}

/// `LeaderWorkerSet.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LeaderWorkerSetSpec {
    /// Groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Each group's pods.
    pub leader_worker_template: LeaderWorkerTemplate,
}

/// `spec.leaderWorkerTemplate`, the part read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LeaderWorkerTemplate {
    /// Pods per group, the leader included (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// What LeaderWorkerSet does when a pod of the group restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
}

impl kube::Resource for LeaderWorkerSet {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("LeaderWorkerSet")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("leaderworkerset.x-k8s.io")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("leaderworkersets")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The leader's group: its LeaderWorkerSet and group index.
#[derive(Debug, Clone)]
pub struct GroupContext {
    /// The client and this pod (`cluster_name` is the LeaderWorkerSet's).
    pub context: KubeContext,
    /// This group's index.
    pub group_index: String,
}

/// Finds this pod's LeaderWorkerSet and group from its labels.
pub async fn connect_group(config: &KubernetesConfig) -> Result<GroupContext, KubeError> {
    let (client, server, namespace, pod_name) = client_for(config).map_err(KubeError::Setup)?;
    let pod = read_pod(&client, &server, &namespace, &pod_name)
        .await
        .map_err(KubeError::Api)?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let name = config
        .cluster_name
        .clone()
        .or_else(|| labels.get(NAME_LABEL).cloned())
        .ok_or_else(|| {
            KubeError::Setup(format!(
                "pod {pod_name} has no {NAME_LABEL} label, so its LeaderWorkerSet is unknown; is it a LeaderWorkerSet pod? set kubernetes.cluster-name"
            ))
        })?;
    let group_index = labels
        .get(GROUP_INDEX_LABEL)
        .cloned()
        .unwrap_or_else(|| "0".to_string());
    Ok(GroupContext {
        context: KubeContext {
            client,
            server,
            namespace,
            pod_name,
            pod_uid: pod.metadata.uid.clone(),
            cluster_name: name,
        },
        group_index,
    })
}

/// The facts of one group: the size its LeaderWorkerSet gives, and every
/// worker pod (worker index above 0) with its state.
pub fn group_facts(
    set: Option<&LeaderWorkerSet>,
    group_index: &str,
    pods: &[Pod],
    errors: &[String],
) -> ExternalFacts {
    let mut members: Vec<MemberState> = pods
        .iter()
        .filter_map(|pod| {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let index = labels.get(WORKER_INDEX_LABEL)?;
            (index != "0").then(|| MemberState {
                name: pod.metadata.name.clone().unwrap_or_default(),
                group: format!("rank {index}"),
                ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                state: describe_pod(pod),
            })
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut notes: Vec<String> = errors.iter().map(|e| format!("kubernetes: {e}")).collect();
    let size = set.map(|s| s.spec.leader_worker_template.size.unwrap_or(1));
    if let (Some(set), Some(size)) = (set, size) {
        let name = set.metadata.name.as_deref().unwrap_or("?");
        let workers = size.saturating_sub(1) as usize;
        if members.len() < workers {
            notes.push(format!(
                "group {group_index} of LeaderWorkerSet {name}: {} of {workers} worker pods exist; see kubectl describe leaderworkerset {name}",
                members.len()
            ));
        }
    }
    ExternalFacts {
        expected: size.map(|nodes| Topology {
            nodes,
            ..Topology::default()
        }),
        members,
        notes,
        autoscaling: false,
    }
}

/// Watches this group's LeaderWorkerSet and pods. The first facts are in
/// the channel before this returns; errors are in their notes; the watch
/// ends once the receiver is dropped.
pub async fn watch_group(group: &GroupContext) -> tokio::sync::watch::Receiver<ExternalFacts> {
    let context = &group.context;
    let group_index = group.group_index.clone();
    let followed = Followed {
        owner_access: Access::leaderworkersets,
        pod_labels: format!(
            "{NAME_LABEL}={},{GROUP_INDEX_LABEL}={}",
            context.cluster_name, group.group_index
        ),
        facts: move |set: Option<&LeaderWorkerSet>, pods: &[Pod], errors: &[String]| {
            group_facts(set, &group_index, pods, errors)
        },
    };
    follow_owner_and_pods(context, followed).await
}
