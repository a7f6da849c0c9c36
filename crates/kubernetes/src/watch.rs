//! Watching the RayCluster and its pods, turned into [`ExternalFacts`] for
//! the wait phase: the expected topology follows a scale change without a
//! restart, and every worker pod's state is at hand for the diagnosis.
//! Entry point: [`watch_cluster`].
//!
//! The RayCluster and its pods are followed by the generic owner-and-pods
//! follower ([`crate::follower`]); this module says what they mean
//! ([`cluster_facts`]).

use crate::api::{Access, KubeContext};
use crate::follower::{Followed, follow_owner_and_pods};
use crate::pods::members_and_notes;
use crate::raycluster::{CLUSTER_LABEL, RayCluster};
use k8s_openapi::api::core::v1::Pod;
use orchestrator_domain::{ClusterConfig, ExternalFacts};

/// The facts of a RayCluster and its pods: the expected topology (from
/// the configuration merged with the RayCluster's groups, or with Ray's
/// autoscaler from the serve layout), every worker pod that is not a Ray
/// node yet, and the API errors as notes.
pub fn cluster_facts(
    cluster: Option<&RayCluster>,
    pods: &[Pod],
    errors: &[String],
    config: &ClusterConfig,
    layout_gpus: Option<f64>,
) -> ExternalFacts {
    let (members, mut notes) = members_and_notes(cluster, pods);
    notes.extend(errors.iter().map(|e| format!("kubernetes: {e}")));
    let autoscaled = cluster.filter(|c| c.spec.enable_in_tree_autoscaling == Some(true));
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
        None => cluster.map(|c| config.merge(c.spec.topology())),
    };
    ExternalFacts {
        expected,
        members,
        notes,
        autoscaling,
    }
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
    let followed = Followed {
        owner_access: Access::rayclusters,
        pod_labels: format!("{CLUSTER_LABEL}={}", context.cluster_name),
        facts: move |cluster: Option<&RayCluster>, pods: &[Pod], errors: &[String]| {
            cluster_facts(cluster, pods, errors, &config, layout_gpus)
        },
    };
    follow_owner_and_pods(context, followed).await
}
