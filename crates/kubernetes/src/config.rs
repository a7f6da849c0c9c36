//! The `[kubernetes]` table of the configuration.

use serde::{Deserialize, Serialize};

/// Kubernetes awareness: the expected topology from the pod's RayCluster,
/// diagnosis of workers that have not joined, and Events on the head pod.
/// Off unless `enabled`; bare-metal and local use need no cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Talk to the Kubernetes API server (head only).
    pub enabled: bool,
    /// The API server's URL; unset: the in-cluster service account
    /// (`KUBERNETES_SERVICE_HOST`, token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`). Plain `http://`
    /// serves `kubectl proxy` and tests.
    pub api_server: Option<String>,
    /// The namespace; unset: `POD_NAMESPACE`, then the service account's.
    pub namespace: Option<String>,
    /// This pod's name; unset: `POD_NAME`, then `HOSTNAME`.
    pub pod_name: Option<String>,
    /// The RayCluster's name; unset: this pod's `ray.io/cluster` label.
    pub cluster_name: Option<String>,
    /// Record Events on this pod for phase changes, failures and restarts.
    pub events: bool,
    /// Events that may be sent at once before the rate limit applies.
    pub event_burst: u32,
    /// Seconds per Event the rate limit allows after the burst.
    pub event_interval_seconds: u64,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api_server: None,
            namespace: None,
            pod_name: None,
            cluster_name: None,
            events: true,
            event_burst: 10,
            event_interval_seconds: 10,
        }
    }
}
