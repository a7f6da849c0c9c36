//! The cluster the head waits for, as configured: [`ClusterConfig`] (the
//! `[cluster]` table) and the expected [`Topology`] it implies, merged with
//! what a platform (a RayCluster) says.

use crate::{NodeGroup, Topology};
use serde::{Deserialize, Serialize};

/// One expected group of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GroupConfig {
    /// The group's name.
    pub name: String,
    /// Its node count.
    pub replicas: u32,
    /// CPUs per node.
    pub cpus_per_node: f64,
    /// GPUs per node.
    pub gpus_per_node: f64,
}

/// The cluster the head waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Nodes that must be alive, the head included (unset: 1, or the head
    /// plus the groups' replicas, or what the RayCluster says when
    /// `kubernetes.enabled`).
    pub nodes: Option<u32>,
    /// GPUs the cluster must offer in total (0: not checked).
    pub gpus: f64,
    /// GPUs every node must offer (0: not checked).
    pub min_gpus_per_node: f64,
    /// Per-group shape, when known.
    pub groups: Vec<GroupConfig>,
    /// Seconds the wait phase may take.
    pub wait_timeout_seconds: u64,
    /// Ask Ray's autoscaler (through the GCS, as
    /// `ray.autoscaler.sdk.request_resources` does) for the expected
    /// workers' capacity while waiting, so that worker groups that start
    /// below it (`minReplicas: 0`) are scaled up instead of waited for.
    pub request_resources: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nodes: None,
            gpus: 0.0,
            min_gpus_per_node: 0.0,
            groups: vec![],
            wait_timeout_seconds: 600,
            request_resources: false,
        }
    }
}

impl ClusterConfig {
    /// The expected topology in the policy contract's terms. When `nodes`
    /// is unset, the node count is the head plus the groups' replicas.
    pub fn topology(&self) -> Topology {
        let from_groups: u32 = self.groups.iter().map(|g| g.replicas).sum();
        Topology {
            nodes: self.nodes.unwrap_or(from_groups + 1),
            gpus: self.gpus,
            min_gpus_per_node: self.min_gpus_per_node,
            groups: self
                .groups
                .iter()
                .map(|g| NodeGroup {
                    name: g.name.clone(),
                    replicas: g.replicas,
                    cpus_per_node: g.cpus_per_node,
                    gpus_per_node: g.gpus_per_node,
                })
                .collect(),
        }
    }

    /// The expected topology a platform reports, with every field this
    /// configuration sets explicitly taking precedence. Configured groups
    /// are the layout: the node count and GPUs then follow from them
    /// (unless set too), not from the platform.
    pub fn merge(&self, from_platform: Topology) -> Topology {
        let own = (!self.groups.is_empty()).then(|| self.topology());
        Topology {
            nodes: self
                .nodes
                .or(own.as_ref().map(|t| t.nodes))
                .unwrap_or(from_platform.nodes),
            gpus: if self.gpus > 0.0 {
                self.gpus
            } else if let Some(t) = &own {
                // The configured workers' GPUs, plus the head's as the
                // platform counts them (its total less its groups').
                let groups = |t: &Topology| -> f64 {
                    t.groups
                        .iter()
                        .map(|g| f64::from(g.replicas) * g.gpus_per_node)
                        .sum()
                };
                let head = (from_platform.gpus - groups(&from_platform)).max(0.0);
                groups(t) + head
            } else {
                from_platform.gpus
            },
            min_gpus_per_node: self.min_gpus_per_node,
            groups: if self.groups.is_empty() {
                from_platform.groups
            } else {
                self.topology().groups
            },
        }
    }
}
