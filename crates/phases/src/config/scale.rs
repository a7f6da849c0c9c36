//! `[scale]`: the load-driven replica recommendation. Entry point:
//! [`ScaleConfig`].

use serde::{Deserialize, Serialize};

/// The head's load-driven recommendation: vLLM's `/metrics` read at an
/// interval, a window of samples judged by the scale policy, the answer
/// exported as `orchestrator_desired_replicas` for HPA, KEDA or AIBrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ScaleConfig {
    /// Whether the head samples the load and asks the scale policy.
    pub enabled: bool,
    /// How often a sample is taken (and the policy asked), ms.
    pub interval_ms: u64,
    /// How much load history the policy sees, seconds.
    pub(crate) window_seconds: u64,
    /// The least replicas a recommendation may name.
    pub min_replicas: u32,
    /// The most replicas a recommendation may name.
    pub max_replicas: u32,
    /// The serving replicas the load is spread over now (this head sees
    /// its own share): 1 for a lone RayCluster; for a fleet, its replicas
    /// (e.g. through the environment override from the fleet's spec).
    pub current_replicas: u32,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_ms: 5000,
            window_seconds: 60,
            min_replicas: 1,
            max_replicas: 8,
            current_replicas: 1,
        }
    }
}
