//! What Kubernetes says about a pod that should be a Ray worker, in one
//! line a user can act on, and the facts the wait phase combines with the
//! GCS membership.

use crate::raycluster::{GROUP_LABEL, NODE_TYPE_LABEL, RayCluster};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use orchestrator_domain::MemberState;
use std::collections::BTreeMap;

/// One line on the pod's state: why it is not (yet) a Ray node.
///
/// - Pending and unschedulable: the scheduler's message, e.g. `Pending,
///   unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.`
/// - an image that cannot be pulled: `ImagePullBackOff: <message>`
/// - a container restarting: `CrashLoopBackOff (restarted 4 times; last
///   exit: Error, code 1)`
/// - init containers still running (KubeRay's `wait-gcs-ready`)
/// - Running: `Running but not yet in the GCS`
pub fn describe_pod(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "terminating".to_string();
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    let waiting = |statuses: &Option<Vec<ContainerStatus>>| -> Option<String> {
        statuses.as_ref()?.iter().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone().unwrap_or_default();
            if reason.is_empty() || reason == "PodInitializing" || reason == "ContainerCreating" {
                return None;
            }
            let mut line = format!("{reason} (container {})", c.name);
            if reason == "CrashLoopBackOff" {
                line = format!(
                    "CrashLoopBackOff (container {}, restarted {} times",
                    c.name, c.restart_count
                );
                if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    line.push_str(&format!(
                        "; last exit: {}, code {}",
                        t.reason.as_deref().unwrap_or("unknown"),
                        t.exit_code
                    ));
                    if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
                        line.push_str(&format!(", {}", one_line(m)));
                    }
                }
                line.push(')');
            } else if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
                line.push_str(&format!(": {}", one_line(m)));
            }
            Some(line)
        })
    };
    if let Some(line) = waiting(&status.init_container_statuses) {
        return format!("{phase}, init container {line}");
    }
    if let Some(line) = waiting(&status.container_statuses) {
        return format!("{phase}, {line}");
    }
    let conditions = status.conditions.clone().unwrap_or_default();
    match phase.as_str() {
        "Pending" => {
            if let Some(c) = conditions
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            {
                return format!(
                    "Pending, {}: {}",
                    c.reason
                        .as_deref()
                        .unwrap_or("not scheduled")
                        .to_lowercase(),
                    one_line(c.message.as_deref().unwrap_or("no message"))
                );
            }
            let init_running = status
                .init_container_statuses
                .as_ref()
                .and_then(|s| {
                    s.iter()
                        .find(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                })
                .map(|c| c.name.clone());
            match init_running {
                Some(name) => format!(
                    "Pending, init container {name} running (KubeRay's wait-gcs-ready waits for the head's GCS)"
                ),
                None => "Pending, containers being created".to_string(),
            }
        }
        "Running" => {
            if status.pod_ip.is_none() {
                "Running, no pod IP yet".to_string()
            } else {
                format!(
                    "Running at {} but not yet in the GCS (ray start still running, or it joined another head)",
                    status.pod_ip.as_deref().unwrap_or_default()
                )
            }
        }
        "Failed" | "Succeeded" => format!(
            "{phase}: {}",
            [status.reason.as_deref(), status.message.as_deref()]
                .into_iter()
                .flatten()
                .map(one_line)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn one_line(text: &str) -> String {
    shorten(text.split_whitespace().collect::<Vec<_>>().join(" "), 300)
}

/// `text` cut to at most `max` bytes (on a character boundary), ending in
/// `...` when cut.
pub(crate) fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The worker pods as members, and a note for every worker group with
/// fewer pods than its spec asks for (with KubeRay's `ReplicaFailure`
/// message when it has one).
pub fn members_and_notes(
    cluster: Option<&RayCluster>,
    pods: &[Pod],
) -> (Vec<MemberState>, Vec<String>) {
    let mut members = Vec::new();
    let mut per_group: BTreeMap<String, u32> = BTreeMap::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if labels.get(NODE_TYPE_LABEL).map(String::as_str) == Some("head") {
            continue;
        }
        let group = labels.get(GROUP_LABEL).cloned().unwrap_or_default();
        *per_group.entry(group.clone()).or_default() += 1;
        members.push(MemberState {
            name: pod.metadata.name.clone().unwrap_or_default(),
            group,
            ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            state: describe_pod(pod),
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut notes = Vec::new();
    if let Some(cluster) = cluster {
        let name = cluster.metadata.name.as_deref().unwrap_or("?");
        let failure = cluster
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            })
            .map(|c| format!(" (KubeRay: {}: {})", c.reason, one_line(&c.message)))
            .unwrap_or_default();
        for g in &cluster.spec.worker_group_specs {
            let want = if cluster.spec.suspend == Some(true) {
                0
            } else {
                g.desired_pods()
            };
            let have = per_group.get(&g.group_name).copied().unwrap_or(0);
            if have < want {
                notes.push(format!(
                    "worker group {} of RayCluster {name}: {have} of {want} pods exist{failure}; see kubectl describe raycluster {name}",
                    g.group_name
                ));
            }
        }
    }
    (members, notes)
}
