//! Cluster membership as a source reports it, whatever the source: Ray's
//! GCS today, the native backend's rendezvous later. Entry point:
//! [`MembershipUpdate`], what a source sends on every change.

use crate::Node;
use std::collections::{HashMap, HashSet};
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

    /// The view's order: head first, then by registration time, then id.
    pub fn order(a: &Node, b: &Node) -> std::cmp::Ordering {
        b.is_head
            .cmp(&a.is_head)
            .then(a.start_time_ms.cmp(&b.start_time_ms))
            .then_with(|| a.id.cmp(&b.id))
    }

    /// A view of `nodes` in the view's order.
    pub fn from_nodes(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(Self::order);
        let mut view = Self { nodes };
        view.retire_superseded_heads();
        view
    }

    /// A cluster has one head. After a GCS restart with fault tolerance
    /// (Redis), the recovered node table still holds the previous head as
    /// alive until the GCS's health checks give up on it; a head older
    /// than the newest alive head is that leftover and counts as dead, so
    /// the new head's wait and launch see the cluster that exists.
    fn retire_superseded_heads(&mut self) {
        let newest = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.is_head)
            .map(|n| n.start_time_ms)
            .max();
        if let Some(newest) = newest {
            for node in &mut self.nodes {
                if node.is_head && node.alive && node.start_time_ms < newest {
                    node.alive = false;
                }
            }
        }
    }

    /// Applies one change in place, keeping the order.
    pub fn apply(&mut self, change: &MembershipChange) {
        self.apply_all(std::slice::from_ref(change));
    }

    /// Applies changes in place, in order, keeping the view's order: a
    /// joined node is added (or replaces what was known of it), a dead one
    /// is marked dead (and added, as dead, if it was never seen). One pass
    /// over the view finds the changed nodes, so a batch of k changes costs
    /// O(n + k), not O(n * k).
    pub fn apply_all(&mut self, changes: &[MembershipChange]) {
        if changes.is_empty() {
            return;
        }
        enum Slot {
            Known(usize),
            Added(usize),
        }
        let ids: HashSet<&str> = changes.iter().map(|c| c.node().id.as_str()).collect();
        let mut slots: HashMap<&str, Slot> = HashMap::with_capacity(ids.len());
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(id) = ids.get(node.id.as_str()) {
                slots.insert(id, Slot::Known(i));
            }
        }
        let mut added: Vec<Node> = Vec::new();
        for change in changes {
            let node = change.node();
            let joined = matches!(change, MembershipChange::Joined(_));
            let target = match slots.get(node.id.as_str()) {
                Some(Slot::Known(i)) => self.nodes.get_mut(*i),
                Some(Slot::Added(i)) => added.get_mut(*i),
                None => {
                    slots.insert(node.id.as_str(), Slot::Added(added.len()));
                    added.push(node.clone());
                    added.last_mut()
                }
            };
            if let Some(target) = target {
                if joined {
                    target.clone_from(node);
                }
                target.alive = joined;
            }
        }
        self.nodes.extend(added);
        if !self.nodes.is_sorted_by(|a, b| Self::order(a, b).is_le()) {
            self.nodes.sort_by(Self::order);
        }
        self.retire_superseded_heads();
    }
}

/// One update from the watcher.
#[derive(Debug, Clone)]
pub struct MembershipUpdate {
    /// The whole membership after this update, for a snapshot or a lost
    /// connection; `None` for a push, whose `changes` apply to the view
    /// the receiver already has ([`apply_to`](Self::apply_to)), so a
    /// change of a few nodes costs a few nodes at any cluster size.
    pub view: Option<ClusterView>,
    /// What changed (empty for a snapshot that changed nothing).
    pub changes: Vec<MembershipChange>,
    /// Why this update was sent.
    pub source: UpdateSource,
    /// When the watcher received it.
    pub received_at: Instant,
}

impl MembershipUpdate {
    /// Brings `view` up to date: replaced by a whole view, or changed by
    /// the pushed changes.
    pub fn apply_to(&self, view: &mut ClusterView) {
        match &self.view {
            Some(whole) => whole.clone_into(view),
            None => view.apply_all(&self.changes),
        }
    }

    /// As [`apply_to`](Self::apply_to), taking the whole view without a
    /// copy.
    pub fn apply_into(self, view: &mut ClusterView) {
        match self.view {
            Some(whole) => *view = whole,
            None => view.apply_all(&self.changes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u64, head: bool) -> Node {
        Node {
            id: format!("{i:056x}"),
            is_head: head,
            alive: true,
            start_time_ms: 1000 - i,
            ..Node::default()
        }
    }

    #[test]
    fn applied_changes_give_the_same_view_as_a_fresh_snapshot() {
        let mut view = ClusterView::from_nodes(vec![node(5, false), node(0, true)]);
        for change in [
            MembershipChange::Joined(node(3, false)),
            MembershipChange::Joined(node(9, false)),
            MembershipChange::Died {
                node: node(5, false),
                reason: None,
            },
            MembershipChange::Died {
                node: node(7, false),
                reason: None,
            },
            MembershipChange::Joined(node(5, false)),
        ] {
            view.apply(&change);
        }
        let mut dead = node(7, false);
        dead.alive = false;
        let expected = ClusterView::from_nodes(vec![
            node(0, true),
            node(3, false),
            node(5, false),
            node(9, false),
            dead,
        ]);
        assert_eq!(view, expected);
        assert_eq!(view.nodes[0].id, node(0, true).id, "head first");
        assert_eq!(view.alive().count(), 4);
    }

    #[test]
    fn a_head_older_than_the_newest_alive_head_counts_as_dead() {
        // The recovered table after a GCS restart: the old head (older
        // start time) still alive, the new head, a worker.
        let old_head = node(5, true);
        let new_head = node(1, true);
        let view =
            ClusterView::from_nodes(vec![old_head.clone(), node(7, false), new_head.clone()]);
        let alive: Vec<&str> = view.alive().map(|n| n.id.as_str()).collect();
        assert_eq!(alive, [new_head.id.as_str(), node(7, false).id.as_str()]);
        // The same when the new head arrives as a push.
        let mut view = ClusterView::from_nodes(vec![old_head.clone(), node(7, false)]);
        assert_eq!(view.alive().count(), 2, "one head: nothing retired");
        view.apply(&MembershipChange::Joined(new_head.clone()));
        assert!(!view.nodes.iter().any(|n| n.id == old_head.id && n.alive));
        assert_eq!(view.alive().count(), 2);
    }
}
