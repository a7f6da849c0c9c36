//! Where cluster membership comes from. The wait and serve phases follow a
//! [`MembershipSource`] and never name Ray: [`RayGcs`] is the source for
//! Ray clusters (GetAllNodeInfo snapshot, then node-info pub/sub); another
//! backend brings its own.

use orchestrator_domain::{KeyValue, MembershipUpdate};
use tokio::sync::mpsc;

/// A source of membership updates.
pub trait MembershipSource: Send + Sync + std::fmt::Debug {
    /// Starts following the membership on the current tokio runtime. The
    /// first update is a full snapshot; connection problems arrive as
    /// `Disconnected` updates; it runs until the receiver is dropped.
    fn watch(&self) -> mpsc::UnboundedReceiver<MembershipUpdate>;

    /// Where the membership comes from, for messages (`the Ray GCS at
    /// 10.0.0.1:6379`).
    fn describe(&self) -> String;

    /// Environment the serving process needs to join this cluster.
    fn serving_env(&self) -> Vec<KeyValue> {
        Vec::new()
    }
}

/// A Ray cluster's GCS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RayGcs {
    /// `HOST:PORT`.
    pub address: String,
}

impl RayGcs {
    /// The GCS at `address` (`HOST:PORT`).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
        }
    }
}

impl MembershipSource for RayGcs {
    fn watch(&self) -> mpsc::UnboundedReceiver<MembershipUpdate> {
        orchestrator_ray_gcs::watch_membership(self.address.clone())
    }

    fn describe(&self) -> String {
        format!("the Ray GCS at {}", self.address)
    }

    /// vLLM's driver joins this cluster, not whatever `ray.init("auto")`
    /// would find in /tmp/ray.
    fn serving_env(&self) -> Vec<KeyValue> {
        vec![KeyValue::new("RAY_ADDRESS", self.address.clone())]
    }
}
