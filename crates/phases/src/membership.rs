//! Where cluster membership comes from. The wait and serve phases follow a
//! [`MembershipSource`] and never name Ray: [`RayGcs`] is the source for
//! Ray clusters (GetAllNodeInfo snapshot, then node-info pub/sub); another
//! backend brings its own.

use orchestrator_domain::{KeyValue, MembershipUpdate};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;

/// What [`MembershipSource::reachable`] returns: answers once the source
/// does, or says why it never did within the limit.
pub type Reachable<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

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

    /// Resolves once the source answers (a worker waits for it before it
    /// starts its node), retrying for up to `limit`.
    fn reachable(&self, limit: Duration) -> Reachable<'_>;
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

    fn reachable(&self, limit: Duration) -> Reachable<'_> {
        Box::pin(async move {
            orchestrator_ray_gcs::GcsClient::connect_until(&self.address, limit)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
