//! `[node-health]`: this node's own checks. Entry point:
//! [`NodeHealthConfig`].

use serde::{Deserialize, Serialize};

/// Every node's own health checks: probes at an interval, the node-health
/// policy's verdict published in Ray's GCS for the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeHealthConfig {
    /// Whether this node checks itself and the head follows the reports.
    pub enabled: bool,
    /// How often the probes read and the verdict is published, ms.
    pub interval_ms: u64,
    /// A node whose report has not changed for this long is `stale`, ms.
    pub stale_after_ms: u64,
    /// How often the head reads every node's report, ms.
    pub follow_interval_ms: u64,
    /// How long a worker stays unhealthy before it stops its Ray node and
    /// exits with code 3 (so that Kubernetes replaces the pod), seconds.
    pub unhealthy_grace_seconds: u64,
}

impl Default for NodeHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 1000,
            stale_after_ms: 5000,
            follow_interval_ms: 250,
            unhealthy_grace_seconds: 30,
        }
    }
}
