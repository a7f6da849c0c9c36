//! Facts about the cluster that come from outside Ray, such as what
//! Kubernetes says about the pods that should become Ray nodes.
//!
//! A platform watcher (the `orchestrator-kubernetes` crate) publishes
//! [`ExternalFacts`] on a `tokio::sync::watch` channel; the wait phase takes
//! the expected topology from them (when the configuration leaves it open)
//! and, for every expected node that is not alive in the GCS, puts what the
//! platform says about it into the readiness snapshot's diagnostics, the
//! failure message and `/status`.

use crate::{Node, Topology};
use std::collections::BTreeSet;

/// What a platform knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalFacts {
    /// The expected topology, when the platform knows it and the
    /// configuration does not fix it.
    pub expected: Option<Topology>,
    /// The pods (or machines) that should become worker nodes.
    pub members: Vec<MemberState>,
    /// Other findings, each one line (a group short of pods, an API error
    /// naming the missing permission).
    pub notes: Vec<String>,
    /// The platform scales the workers with Ray's autoscaler (a RayCluster
    /// with `enableInTreeAutoscaling`): workers come when Ray sees demand,
    /// so the head asks for the expected ones.
    pub autoscaling: bool,
}

/// One pod that should become a Ray worker node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberState {
    /// The pod's name.
    pub name: String,
    /// Its worker group.
    pub group: String,
    /// Its IP address, once it has one: a Ray node with this address is
    /// this pod.
    pub ip: Option<String>,
    /// What the platform says about it, one line (e.g. `Pending: 0/4 nodes
    /// are available: 4 Insufficient nvidia.com/gpu`).
    pub state: String,
}

impl ExternalFacts {
    /// One line per expected member that is not alive in `nodes`, then the
    /// notes.
    pub fn diagnose(&self, nodes: &[Node]) -> Vec<String> {
        let alive: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.address.as_str())
            .collect();
        let mut lines: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.ip.as_deref().is_none_or(|ip| !alive.contains(ip)))
            .map(|m| {
                format!(
                    "pod {} (group {}) has not joined the Ray cluster: {}",
                    m.name, m.group, m.state
                )
            })
            .collect();
        lines.extend(self.notes.iter().cloned());
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_members_are_not_reported() {
        let facts = ExternalFacts {
            expected: None,
            members: vec![
                MemberState {
                    name: "w-1".into(),
                    group: "gpu".into(),
                    ip: Some("10.0.0.7".into()),
                    state: "Running".into(),
                },
                MemberState {
                    name: "w-2".into(),
                    group: "gpu".into(),
                    ip: None,
                    state: "Pending: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu".into(),
                },
            ],
            notes: vec!["group gpu: 2 of 3 pods exist".into()],
            autoscaling: false,
        };
        let nodes = vec![Node {
            address: "10.0.0.7".into(),
            alive: true,
            ..Node::default()
        }];
        let lines = facts.diagnose(&nodes);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("w-2") && lines[0].contains("Insufficient nvidia.com/gpu"));
        assert_eq!(lines[1], "group gpu: 2 of 3 pods exist");
        let dead = vec![Node {
            address: "10.0.0.7".into(),
            alive: false,
            ..Node::default()
        }];
        assert_eq!(facts.diagnose(&dead).len(), 3);
    }
}
