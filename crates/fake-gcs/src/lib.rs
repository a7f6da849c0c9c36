//! # orchestrator-fake-gcs
//!
//! A stand-in for Ray's GCS at cluster sizes real Ray cannot reach on one
//! machine. It serves the two gRPC services the orchestrator's membership
//! client talks to, from the same protocol subset with Ray's own field
//! numbers (`crates/ray-gcs/proto`):
//!
//! - `ray.rpc.NodeInfoGcsService/GetAllNodeInfo`: every node, alive or dead;
//! - `ray.rpc.ControlPlanePubSubGcsService/GcsSubscriberCommandBatch` and
//!   `GcsSubscriberPoll`: the node-info channel as Ray publishes it, a long
//!   poll answered with every message past the subscriber's
//!   `max_processed_sequence_id`, at most [`PUBLISH_BATCH`] per reply
//!   (Ray's `publish_batch_size`).
//!
//! Entry point: [`StandIn::start`]; then [`StandIn::register`] and
//! [`StandIn::kill`] change membership as Ray's GCS would announce it.

use orchestrator_ray_gcs::proto::control_plane_pub_sub_gcs_service_server::{
    ControlPlanePubSubGcsService, ControlPlanePubSubGcsServiceServer,
};
use orchestrator_ray_gcs::proto::gcs_node_info::GcsNodeState;
use orchestrator_ray_gcs::proto::node_info_gcs_service_server::{
    NodeInfoGcsService, NodeInfoGcsServiceServer,
};
use orchestrator_ray_gcs::proto::{
    ChannelType, GcsNodeInfo, GcsStatus, GcsSubscriberCommandBatchReply,
    GcsSubscriberCommandBatchRequest, GcsSubscriberPollReply, GcsSubscriberPollRequest,
    GetAllNodeInfoReply, GetAllNodeInfoRequest, NodeDeathInfo, PubMessage, pub_message,
};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tonic::codegen::{Service, http};
use tonic::{Request, Response, Status};

/// Most messages one poll reply carries (Ray's `publish_batch_size`).
pub const PUBLISH_BATCH: usize = 5000;

/// How long a poll waits for news before answering empty.
const LONG_POLL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Table {
    /// Every node ever registered, in registration order.
    nodes: Vec<GcsNodeInfo>,
    index: HashMap<Vec<u8>, usize>,
    /// Every message published; message `i` has sequence id `i + 1`.
    log: Vec<PubMessage>,
    subscribers: HashSet<Vec<u8>>,
}

struct Shared {
    table: Mutex<Table>,
    news: Notify,
    publisher_id: Vec<u8>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means a panicking test thread; the table is
        // still consistent (every change is one push).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ok() -> Option<GcsStatus> {
    Some(GcsStatus {
        code: 0,
        message: String::new(),
    })
}

#[derive(Clone)]
struct Gcs(Arc<Shared>);

#[tonic::async_trait]
impl NodeInfoGcsService for Gcs {
    async fn get_all_node_info(
        &self,
        _request: Request<GetAllNodeInfoRequest>,
    ) -> Result<Response<GetAllNodeInfoReply>, Status> {
        let nodes = self.0.table().nodes.clone();
        let total = nodes.len() as i64;
        Ok(Response::new(GetAllNodeInfoReply {
            status: ok(),
            node_info_list: nodes,
            total,
            num_filtered: 0,
        }))
    }
}

#[tonic::async_trait]
impl ControlPlanePubSubGcsService for Gcs {
    async fn gcs_subscriber_command_batch(
        &self,
        request: Request<GcsSubscriberCommandBatchRequest>,
    ) -> Result<Response<GcsSubscriberCommandBatchReply>, Status> {
        let request = request.into_inner();
        self.0.table().subscribers.insert(request.subscriber_id);
        self.0.news.notify_waiters();
        Ok(Response::new(GcsSubscriberCommandBatchReply {
            status: ok(),
        }))
    }

    async fn gcs_subscriber_poll(
        &self,
        request: Request<GcsSubscriberPollRequest>,
    ) -> Result<Response<GcsSubscriberPollReply>, Status> {
        let request = request.into_inner();
        let after = usize::try_from(request.max_processed_sequence_id.max(0)).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        loop {
            // Registered before looking, so news in between is not missed.
            let news = self.0.news.notified();
            let batch: Vec<PubMessage> = {
                let table = self.0.table();
                table
                    .log
                    .get(after..)
                    .unwrap_or(&[])
                    .iter()
                    .take(PUBLISH_BATCH)
                    .cloned()
                    .collect()
            };
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(GcsSubscriberPollReply {
                    pub_messages: batch,
                    publisher_id: self.0.publisher_id.clone(),
                    status: ok(),
                }));
            }
            let _ = tokio::time::timeout_at(deadline, news).await;
        }
    }
}

/// Both services behind one listener, dispatched by gRPC path.
#[derive(Clone)]
struct Both {
    nodes: NodeInfoGcsServiceServer<Gcs>,
    pubsub: ControlPlanePubSubGcsServiceServer<Gcs>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Both {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request
            .uri()
            .path()
            .starts_with("/ray.rpc.NodeInfoGcsService/")
        {
            Box::pin(self.nodes.call(request))
        } else {
            Box::pin(self.pubsub.call(request))
        }
    }
}

/// A running stand-in GCS. Dropping it stops the server.
pub struct StandIn {
    shared: Arc<Shared>,
    address: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl StandIn {
    /// Listens on `listen` (port 0 picks one) and serves on the current
    /// tokio runtime.
    pub async fn start(listen: SocketAddr) -> std::io::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let mut publisher_id = vec![0u8; 28];
        for (i, b) in publisher_id.iter_mut().enumerate() {
            *b = (i as u8)
                .wrapping_mul(37)
                .wrapping_add(address.port() as u8);
        }
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            news: Notify::new(),
            publisher_id,
        });
        let gcs = Gcs(Arc::clone(&shared));
        let service = Both {
            nodes: NodeInfoGcsServiceServer::new(gcs.clone()),
            pubsub: ControlPlanePubSubGcsServiceServer::new(gcs),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // gRPC's C++ server (Ray's GCS) sets TCP_NODELAY on every
        // connection; without it a reply of several HTTP/2 frames waits on
        // the peer's delayed ACK (about 40 ms on Linux).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(StandIn {
            shared,
            address,
            _stop: stop,
        })
    }

    /// `HOST:PORT`, for `--address`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Subscribers that have subscribed so far.
    pub fn subscribers(&self) -> usize {
        self.shared.table().subscribers.len()
    }

    /// Nodes alive now.
    pub fn alive(&self) -> usize {
        self.shared
            .table()
            .nodes
            .iter()
            .filter(|n| n.state == GcsNodeState::Alive as i32)
            .count()
    }

    /// Registers `nodes` (alive) and publishes one message each, in one
    /// step: a poll sees all of them or none.
    pub fn register(&self, nodes: Vec<GcsNodeInfo>) {
        let mut table = self.shared.table();
        for mut node in nodes {
            node.state = GcsNodeState::Alive as i32;
            publish(&mut table, &node);
            match table.index.get(&node.node_id).copied() {
                Some(i) => table.nodes[i] = node,
                None => {
                    let i = table.nodes.len();
                    table.index.insert(node.node_id.clone(), i);
                    table.nodes.push(node);
                }
            }
        }
        drop(table);
        self.shared.news.notify_waiters();
    }

    /// Marks the nodes with these ids dead, with `reason`, as Ray does when
    /// a raylet stops heartbeating; unknown ids are ignored.
    pub fn kill(&self, ids: &[Vec<u8>], reason: &str) {
        let mut table = self.shared.table();
        for id in ids {
            let Some(i) = table.index.get(id).copied() else {
                continue;
            };
            let mut node = table.nodes[i].clone();
            node.state = GcsNodeState::Dead as i32;
            node.death_info = Some(NodeDeathInfo {
                reason: 1,
                reason_message: reason.to_string(),
            });
            publish(&mut table, &node);
            table.nodes[i] = node;
        }
        drop(table);
        self.shared.news.notify_waiters();
    }
}

fn publish(table: &mut Table, node: &GcsNodeInfo) {
    let sequence_id = table.log.len() as i64 + 1;
    table.log.push(PubMessage {
        channel_type: ChannelType::GcsNodeInfoChannel as i32,
        key_id: node.node_id.clone(),
        inner_message: Some(pub_message::InnerMessage::NodeInfoMessage(node.clone())),
        sequence_id,
    });
}

/// A stand-in raylet: Ray's `NodeManagerService`, answering only
/// `GetSystemConfig` (what the wait asks a node to learn that it answers).
/// Register a node with its port to make that node answer. Stops when
/// dropped.
pub struct StandInRaylet {
    address: SocketAddr,
    raylet: Raylet,
    _stop: oneshot::Sender<()>,
}

/// What a stand-in raylet was asked: calls, and the peers (one per
/// connection) they came from.
#[derive(Clone, Default)]
struct Raylet {
    calls: Arc<std::sync::atomic::AtomicUsize>,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
}

#[tonic::async_trait]
impl orchestrator_ray_gcs::proto::node_manager_service_server::NodeManagerService for Raylet {
    async fn get_system_config(
        &self,
        request: Request<orchestrator_ray_gcs::proto::GetSystemConfigRequest>,
    ) -> Result<Response<orchestrator_ray_gcs::proto::GetSystemConfigReply>, Status> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(peer) = request.remote_addr() {
            self.peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer);
        }
        Ok(Response::new(
            orchestrator_ray_gcs::proto::GetSystemConfigReply {},
        ))
    }
}

impl StandInRaylet {
    /// Listens on `listen` (port 0 picks one) and serves on the current
    /// tokio runtime.
    pub async fn start(listen: SocketAddr) -> std::io::Result<StandInRaylet> {
        use orchestrator_ray_gcs::proto::node_manager_service_server::NodeManagerServiceServer;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let raylet = Raylet::default();
        let serving = raylet.clone();
        // As gRPC's C++ server (Ray's raylet) does.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(
                    NodeManagerServiceServer::new(serving),
                    incoming,
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Ok(StandInRaylet {
            address,
            raylet,
            _stop: stop,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Calls answered so far.
    pub fn calls(&self) -> usize {
        self.raylet.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections the calls came over (distinct peer addresses).
    pub fn connections(&self) -> usize {
        self.raylet
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Node `i` of a synthetic GPU cluster: node 0 is the head; every node has
/// Ray's usual resources and labels, 28-byte id, address `10.x.y.z`.
pub fn synthetic_node(i: u32) -> GcsNodeInfo {
    let mut node_id = vec![0u8; 28];
    node_id[..4].copy_from_slice(&i.to_be_bytes());
    node_id[27] = 0x5a;
    let address = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    let head = i == 0;
    let mut resources = HashMap::new();
    resources.insert("CPU".to_string(), 8.0);
    if !head {
        resources.insert("GPU".to_string(), 8.0);
        resources.insert("accelerator_type:H100".to_string(), 1.0);
    }
    resources.insert("memory".to_string(), 64.0 * 1024.0 * 1024.0 * 1024.0);
    resources.insert(
        "object_store_memory".to_string(),
        8.0 * 1024.0 * 1024.0 * 1024.0,
    );
    resources.insert(format!("node:{address}"), 1.0);
    let mut labels = HashMap::new();
    let group = if head { "headgroup" } else { "gpu-workers" };
    labels.insert("ray.io/node-group".to_string(), group.to_string());
    labels.insert("ray.io/node-id".to_string(), format!("{i:08x}"));
    GcsNodeInfo {
        node_id,
        node_manager_address: address.clone(),
        node_manager_port: 40_000 + (i % 20_000) as i32,
        object_manager_port: 41_000,
        state: GcsNodeState::Alive as i32,
        node_manager_hostname: if head {
            "vllm-head".to_string()
        } else {
            format!("vllm-worker-gpu-{i:05}")
        },
        resources_total: resources,
        node_name: address,
        start_time_ms: 1_764_000_000_000 + u64::from(i),
        end_time_ms: 0,
        is_head_node: head,
        labels,
        death_info: None,
    }
}
