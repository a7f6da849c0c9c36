//! The membership watcher: snapshot, then pushed changes, reconnecting with
//! backoff when the connection or the GCS goes away.

use crate::proto::gcs_node_info::GcsNodeState;
use crate::proto::{self, ChannelType, Command, GcsNodeInfo, SubMessage};
use crate::{GcsClient, GcsError, RayletBook, check_status, node_from_proto};
use orchestrator_domain::{ClusterView, MembershipChange, MembershipUpdate, Node, UpdateSource};
use rand::RngCore;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Starts watching the GCS at `address` (`HOST:PORT`) on the current tokio
/// runtime. The watcher runs until the receiver is dropped; it never gives
/// up on its own (the caller applies its deadline): connection failures
/// arrive as [`UpdateSource::Disconnected`] updates.
pub fn watch_membership(address: String) -> mpsc::UnboundedReceiver<MembershipUpdate> {
    watch_membership_recording(address, RayletBook::default())
}

/// [`watch_membership`], recording every node's raylet in `book` as its
/// record arrives (for a [`RayletProber`](crate::RayletProber)).
pub fn watch_membership_recording(
    address: String,
    book: RayletBook,
) -> mpsc::UnboundedReceiver<MembershipUpdate> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut known: BTreeMap<String, Node> = BTreeMap::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            let began = Instant::now();
            let result = tokio::select! {
                r = session(&address, &tx, &mut known, &book) => r,
                () = tx.closed() => return,
            };
            // A session that lasted was a healthy one: retry at once. One
            // that broke early (a GCS that answers the snapshot but not
            // the long poll) backs off, so it is never a busy loop.
            if began.elapsed() >= HEALTHY_SESSION {
                backoff = Duration::from_millis(50);
            }
            let error = match result {
                Ok(()) => "the GCS restarted (its publisher id changed); taking a fresh snapshot"
                    .to_string(),
                Err(e) => e.to_string(),
            };
            let update = MembershipUpdate {
                view: Some(view_of(&known)),
                changes: vec![],
                source: UpdateSource::Disconnected { error },
                received_at: Instant::now(),
            };
            if tx.send(update).is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    rx
}

/// How long a session must last for the next reconnect to be immediate.
const HEALTHY_SESSION: Duration = Duration::from_secs(5);

fn view_of(known: &BTreeMap<String, Node>) -> ClusterView {
    ClusterView::from_nodes(known.values().cloned().collect())
}

/// Applies one node record; returns the change it makes, if any.
fn apply(known: &mut BTreeMap<String, Node>, info: &GcsNodeInfo) -> Option<MembershipChange> {
    let id = hex::encode(&info.node_id);
    if info.state == GcsNodeState::Alive as i32 {
        let node = node_from_proto(info);
        let was_alive = known.get(&id).is_some_and(|n| n.alive);
        known.insert(id, node.clone());
        (!was_alive).then_some(MembershipChange::Joined(node))
    } else {
        // A death notice may be partial (no address): keep what we knew.
        let reason = info
            .death_info
            .as_ref()
            .map(|d| d.reason_message.clone())
            .filter(|m| !m.is_empty());
        let entry = known.entry(id).or_insert_with(|| node_from_proto(info));
        let was_alive = entry.alive;
        entry.alive = false;
        was_alive.then(|| MembershipChange::Died {
            node: entry.clone(),
            reason,
        })
    }
}

/// The command that subscribes `subscriber_id` to node changes.
fn subscribe_to_nodes(subscriber_id: &[u8]) -> proto::GcsSubscriberCommandBatchRequest {
    proto::GcsSubscriberCommandBatchRequest {
        subscriber_id: subscriber_id.to_vec(),
        commands: vec![Command {
            channel_type: ChannelType::GcsNodeInfoChannel as i32,
            key_id: vec![],
            command_message_one_of: Some(proto::command::CommandMessageOneOf::SubscribeMessage(
                SubMessage {},
            )),
        }],
        sender_id: vec![],
    }
}

/// Replaces `known` with a snapshot's nodes; the joins and deaths since
/// what was known (after a reconnection: what happened while away).
fn replace_with_snapshot(
    known: &mut BTreeMap<String, Node>,
    infos: &[proto::GcsNodeInfo],
) -> Vec<MembershipChange> {
    let mut fresh: BTreeMap<String, Node> = BTreeMap::new();
    let mut changes = Vec::new();
    for node in infos.iter().map(node_from_proto) {
        let before = known.get(&node.id);
        match (before.map(|n| n.alive), node.alive) {
            (Some(true), false) => changes.push(MembershipChange::Died {
                node: node.clone(),
                reason: None,
            }),
            (None | Some(false), true) => changes.push(MembershipChange::Joined(node.clone())),
            _ => {}
        }
        fresh.insert(node.id.clone(), node);
    }
    *known = fresh;
    changes
}

/// Applies a poll's messages to `known` (their raylets to `book`); the
/// joins and deaths, and the highest sequence processed.
fn apply_messages(
    known: &mut BTreeMap<String, Node>,
    book: &RayletBook,
    messages: &[proto::PubMessage],
    max_processed: &mut i64,
) -> Vec<MembershipChange> {
    let mut changes = Vec::new();
    for message in messages {
        *max_processed = (*max_processed).max(message.sequence_id);
        if let Some(proto::pub_message::InnerMessage::NodeInfoMessage(info)) =
            &message.inner_message
        {
            book.record(info);
            changes.extend(apply(known, info));
        }
    }
    changes
}

async fn session(
    address: &str,
    tx: &mpsc::UnboundedSender<MembershipUpdate>,
    known: &mut BTreeMap<String, Node>,
    book: &RayletBook,
) -> Result<(), GcsError> {
    let client = GcsClient::connect(address, Duration::from_secs(2)).await?;
    let mut pubsub = client.pubsub();
    let mut subscriber_id = vec![0u8; 28];
    rand::rng().fill_bytes(&mut subscriber_id);
    let rpc_err = |what: &str, s: tonic::Status| crate::rpc_error(address, client.auth(), what, s);

    // Subscribe first, then snapshot: nothing that happens in between is lost.
    let subscribe = subscribe_to_nodes(&subscriber_id);
    // Bounded: a GCS that takes the connection but never answers is
    // reported (and retried), not waited on for ever.
    let subscribe = client.request(subscribe);
    let reply = pubsub
        .gcs_subscriber_command_batch(subscribe)
        .await
        .map_err(|s| rpc_err("subscribing to node changes", s))?
        .into_inner();
    check_status(
        address,
        "subscribing to node changes",
        reply.status.as_ref(),
    )?;

    let infos = client.all_node_info().await?;
    infos.iter().for_each(|info| book.record(info));
    let received_at = Instant::now();
    let changes = replace_with_snapshot(known, &infos);
    tracing::debug!(
        address,
        nodes = known.len(),
        "GCS snapshot taken; following node changes"
    );
    if tx
        .send(MembershipUpdate {
            view: Some(view_of(known)),
            changes,
            source: crate::watch::UpdateSource::Snapshot,
            received_at,
        })
        .is_err()
    {
        return Ok(());
    }

    let mut publisher_id: Vec<u8> = vec![];
    let mut max_processed: i64 = 0;
    loop {
        let request = proto::GcsSubscriberPollRequest {
            subscriber_id: subscriber_id.clone(),
            max_processed_sequence_id: max_processed,
            publisher_id: publisher_id.clone(),
        };
        // A long poll: no deadline, the credentials only.
        let mut request = tonic::Request::new(request);
        client.auth().apply(&mut request);
        let reply = pubsub
            .gcs_subscriber_poll(request)
            .await
            .map_err(|s| rpc_err("polling node changes", s))?
            .into_inner();
        let received_at = Instant::now();
        check_status(address, "polling node changes", reply.status.as_ref())?;
        if !publisher_id.is_empty()
            && !reply.publisher_id.is_empty()
            && reply.publisher_id != publisher_id
        {
            return Ok(());
        }
        if !reply.publisher_id.is_empty() {
            publisher_id = reply.publisher_id;
        }
        let changes = apply_messages(known, book, &reply.pub_messages, &mut max_processed);
        if !changes.is_empty() {
            // Only the changes: the receiver applies them to its view.
            let update = MembershipUpdate {
                view: None,
                changes,
                source: UpdateSource::Push,
                received_at,
            };
            if tx.send(update).is_err() {
                return Ok(());
            }
        }
    }
}
