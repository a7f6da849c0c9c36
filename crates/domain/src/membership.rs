//! Cluster membership as a source reports it, whatever the source: Ray's
//! GCS today, the native backend's rendezvous later. Entry point:
//! [`MembershipUpdate`], what a source sends on every change.

use crate::Node;
use std::time::Instant;

/// A change of one node's membership.
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipChange {
    /// The node registered with the GCS (or was first seen alive).
    Joined(Node),
    /// The GCS marked the node dead.
    Died {
        /// The node as last known, now with `alive == false`.
        node: Node,
        /// Ray's reason, when it gave one.
        reason: Option<String>,
    },
}

impl MembershipChange {
    /// The node the change is about.
    pub fn node(&self) -> &Node {
        match self {
            Self::Joined(node) | Self::Died { node, .. } => node,
        }
    }
}

/// What caused an update.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateSource {
    /// A full `GetAllNodeInfo` snapshot (after every (re)connect).
    Snapshot,
    /// A pub/sub message.
    Push,
    /// The connection was lost or could not be made; the watcher retries.
    Disconnected {
        /// What went wrong.
        error: String,
    },
}

/// The whole membership as the watcher knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// Every node, head first, then by registration time.
    pub nodes: Vec<Node>,
}

impl ClusterView {
    /// Nodes the GCS considers alive.
    pub fn alive(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.alive)
    }
}

/// One update from the watcher.
#[derive(Debug, Clone)]
pub struct MembershipUpdate {
    /// The membership after this update.
    pub view: ClusterView,
    /// What changed (empty for a snapshot that changed nothing).
    pub changes: Vec<MembershipChange>,
    /// Why this update was sent.
    pub source: UpdateSource,
    /// When the watcher received it.
    pub received_at: Instant,
}
