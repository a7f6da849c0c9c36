#![warn(unreachable_pub)]
//! # orchestrator-ray-gcs
//!
//! Watches a Ray cluster's membership through its GCS, over gRPC on the GCS
//! port, the way Ray's own components do:
//!
//! 1. subscribe to the node-info pub/sub channel,
//! 2. take a full snapshot with `NodeInfoGcsService.GetAllNodeInfo`,
//! 3. long-poll `ControlPlanePubSubGcsService.GcsSubscriberPoll`: the GCS
//!    answers as soon as a node registers or dies.
//!
//! A join or death is seen within milliseconds, with no polling of
//! `ray status`. A lost connection (or a restarted GCS, seen as a new
//! publisher id) is retried with backoff and followed by a fresh snapshot.

mod convert;
mod watch;

/// Generated protobuf and gRPC types (a subset of Ray's `ray.rpc`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod proto {
    tonic::include_proto!("ray.rpc");

    /// The autoscaler state service (`ray.rpc.autoscaler`), a subset.
    #[allow(
        missing_docs,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    pub mod autoscaler {
        tonic::include_proto!("ray.rpc.autoscaler");
    }
}

mod auth;
mod autoscaler;
mod raylet;
pub use auth::{AuthError, RayAuth};
pub use autoscaler::{Bundle, RESOURCE_REQUEST_KEY};
pub use raylet::{RayletAnswer, RayletBook, RayletProber};

pub use convert::node_from_proto;
pub use orchestrator_domain::{ClusterView, MembershipChange, MembershipUpdate, UpdateSource};
pub use watch::{watch_membership, watch_membership_recording};

use proto::control_plane_pub_sub_gcs_service_client::ControlPlanePubSubGcsServiceClient;
use proto::internal_kv_gcs_service_client::InternalKvGcsServiceClient;
use proto::node_info_gcs_service_client::NodeInfoGcsServiceClient;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// What can go wrong talking to the GCS.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// The address is not `HOST:PORT`.
    #[error(
        "invalid GCS address {address:?}: {reason}; write it as HOST:PORT, e.g. 127.0.0.2:6379"
    )]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The GCS did not answer before the deadline.
    #[error(
        "the Ray GCS at {address} did not answer within {waited_s:.0} s (last error: {last_error}); check that the head node is up and that its GCS port is reachable from here"
    )]
    Unreachable {
        /// The address tried.
        address: String,
        /// How long it was tried.
        waited_s: f64,
        /// The last error seen.
        last_error: String,
    },
    /// The token configuration of this process is wrong.
    #[error(transparent)]
    AuthConfig(#[from] AuthError),
    /// The GCS (or a raylet) refused this process's credentials.
    #[error(
        "the Ray cluster at {address} refused this orchestrator's credentials ({message}): {fix}"
    )]
    Refused {
        /// The address.
        address: String,
        /// What the server said.
        message: String,
        /// What to do about it.
        fix: String,
    },
    /// A call failed.
    #[error("GCS at {address}: {message}")]
    Rpc {
        /// The address.
        address: String,
        /// What failed.
        message: String,
    },
}

/// A connection to one GCS.
#[derive(Clone)]
pub struct GcsClient {
    address: String,
    channel: Channel,
    auth: RayAuth,
}

impl std::fmt::Debug for GcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Timeout of one unary call.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl GcsClient {
    /// Connects to `HOST:PORT` (one attempt, up to `connect_timeout`),
    /// with the credentials of this process's environment
    /// ([`RayAuth::from_env`]).
    pub async fn connect(address: &str, connect_timeout: Duration) -> Result<Self, GcsError> {
        Self::connect_with(address, connect_timeout, RayAuth::from_env()?).await
    }

    /// [`connect`](Self::connect) with the credentials given.
    pub async fn connect_with(
        address: &str,
        connect_timeout: Duration,
        auth: RayAuth,
    ) -> Result<Self, GcsError> {
        let endpoint = endpoint(address)?.connect_timeout(connect_timeout);
        let channel = endpoint.connect().await.map_err(|e| GcsError::Rpc {
            address: address.to_string(),
            message: format!("cannot connect: {}", error_chain(&e)),
        })?;
        Ok(Self {
            address: address.to_string(),
            channel,
            auth,
        })
    }

    /// A request with the call deadline and this client's credentials.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        self.auth.apply(&mut request);
        request
    }

    /// The credentials this client sends.
    pub fn auth(&self) -> &RayAuth {
        &self.auth
    }

    /// Connects, retrying with backoff until `deadline` has passed.
    pub async fn connect_until(address: &str, deadline: Duration) -> Result<Self, GcsError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            let attempt = async {
                let client = Self::connect(
                    address,
                    left.clamp(Duration::from_millis(10), Duration::from_secs(2)),
                )
                .await?;
                client.get_all_nodes().await?;
                Ok::<_, GcsError>(client)
            };
            let last_error =
                match tokio::time::timeout(left.max(Duration::from_millis(10)), attempt).await {
                    Ok(Ok(client)) => return Ok(client),
                    // Waiting cannot mend these.
                    Ok(Err(
                        e @ (GcsError::Address { .. }
                        | GcsError::AuthConfig(_)
                        | GcsError::Refused { .. }),
                    )) => return Err(e),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_string(),
                };
            if start.elapsed() + backoff >= deadline {
                return Err(GcsError::Unreachable {
                    address: address.to_string(),
                    waited_s: start.elapsed().as_secs_f64(),
                    last_error,
                });
            }
            tracing::debug!(address, "GCS not answering yet: {last_error}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The address this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn rpc_error(&self, what: &str, status: tonic::Status) -> GcsError {
        rpc_error(&self.address, &self.auth, what, status)
    }

    /// Every node the GCS knows, alive and dead.
    pub async fn get_all_nodes(&self) -> Result<Vec<orchestrator_domain::Node>, GcsError> {
        Ok(self
            .all_node_info()
            .await?
            .iter()
            .map(node_from_proto)
            .collect())
    }

    async fn all_node_info(&self) -> Result<Vec<proto::GcsNodeInfo>, GcsError> {
        let mut client = NodeInfoGcsServiceClient::new(self.channel.clone());
        let request = self.request(proto::GetAllNodeInfoRequest { limit: None });
        let reply = client
            .get_all_node_info(request)
            .await
            .map_err(|s| self.rpc_error("GetAllNodeInfo", s))?
            .into_inner();
        check_status(&self.address, "GetAllNodeInfo", reply.status.as_ref())?;
        Ok(reply.node_info_list)
    }

    fn kv(&self) -> InternalKvGcsServiceClient<Channel> {
        InternalKvGcsServiceClient::new(self.channel.clone())
    }

    /// Writes `key` = `value` in `namespace` of the GCS's internal
    /// key-value store, replacing what was there.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), GcsError> {
        let request = self.request(proto::InternalKvPutRequest {
            key: key.as_bytes().to_vec(),
            value,
            overwrite: true,
            namespace: namespace.as_bytes().to_vec(),
        });
        let reply = self
            .kv()
            .internal_kv_put(request)
            .await
            .map_err(|s| self.rpc_error("InternalKVPut", s))?
            .into_inner();
        check_status(&self.address, "InternalKVPut", reply.status.as_ref())
    }

    /// Every key of `namespace` that starts with `prefix`.
    pub async fn kv_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<Vec<u8>>, GcsError> {
        let request = self.request(proto::InternalKvKeysRequest {
            prefix: prefix.as_bytes().to_vec(),
            namespace: namespace.as_bytes().to_vec(),
        });
        let keys = self
            .kv()
            .internal_kv_keys(request)
            .await
            .map_err(|s| self.rpc_error("InternalKVKeys", s))?
            .into_inner();
        check_status(&self.address, "InternalKVKeys", keys.status.as_ref())?;
        Ok(keys.results)
    }

    /// The values of `keys` in `namespace` (absent keys left out).
    pub async fn kv_multi_get(
        &self,
        namespace: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(String, Vec<u8>)>, GcsError> {
        let request = self.request(proto::InternalKvMultiGetRequest {
            keys,
            namespace: namespace.as_bytes().to_vec(),
        });
        let reply = self
            .kv()
            .internal_kv_multi_get(request)
            .await
            .map_err(|s| self.rpc_error("InternalKVMultiGet", s))?
            .into_inner();
        check_status(&self.address, "InternalKVMultiGet", reply.status.as_ref())?;
        Ok(reply
            .results
            .into_iter()
            .map(|e| (String::from_utf8_lossy(&e.key).into_owned(), e.value))
            .collect())
    }

    /// Deletes `key` of `namespace`.
    pub async fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), GcsError> {
        let request = self.request(proto::InternalKvDelRequest {
            key: key.as_bytes().to_vec(),
            namespace: namespace.as_bytes().to_vec(),
            del_by_prefix: false,
        });
        let reply = self
            .kv()
            .internal_kv_del(request)
            .await
            .map_err(|s| self.rpc_error("InternalKVDel", s))?
            .into_inner();
        check_status(&self.address, "InternalKVDel", reply.status.as_ref())
    }

    pub(crate) fn pubsub(&self) -> ControlPlanePubSubGcsServiceClient<Channel> {
        ControlPlanePubSubGcsServiceClient::new(self.channel.clone())
    }
}

fn endpoint(address: &str) -> Result<Endpoint, GcsError> {
    let bad = |reason: &str| GcsError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    Endpoint::from_shared(format!("http://{address}"))
        .map(|e| e.tcp_nodelay(true))
        .map_err(|e| bad(&e.to_string()))
}

/// Words every credentials error's message holds, so that a message
/// passed on as text is still recognised ([`is_credentials_error`]).
const CREDENTIALS_MARK: &str = "orchestrator's credentials";

/// Whether an error's text (of [`GcsError::Refused`] or
/// [`GcsError::AuthConfig`]) is about credentials, where "is the head
/// running?" would mislead.
pub fn is_credentials_error(text: &str) -> bool {
    text.contains(CREDENTIALS_MARK) || text.contains("RAY_AUTH_")
}

/// A failed call as a [`GcsError`]: a refused credential is named as such,
/// with the fix.
pub(crate) fn rpc_error(
    address: &str,
    auth: &RayAuth,
    what: &str,
    status: tonic::Status,
) -> GcsError {
    if status.code() == tonic::Code::Unauthenticated
        || status.message().contains("InvalidAuthToken")
    {
        let fix = match auth.source() {
            Some(from) => format!(
                "the token from {from} is not the cluster's; give this pod the token the Ray nodes were started with (KubeRay: the Secret of the RayCluster's authOptions)"
            ),
            None => "the cluster runs with RAY_AUTH_MODE=token; set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH for this orchestrator (KubeRay: the Secret of the RayCluster's authOptions)".to_string(),
        };
        return GcsError::Refused {
            address: address.to_string(),
            message: format!("{what}: {} ({:?})", status.message(), status.code()),
            fix,
        };
    }
    GcsError::Rpc {
        address: address.to_string(),
        message: format!("{what} failed: {} ({:?})", status.message(), status.code()),
    }
}

pub(crate) fn check_status(
    address: &str,
    what: &str,
    status: Option<&proto::GcsStatus>,
) -> Result<(), GcsError> {
    match status {
        Some(s) if s.code != 0 => Err(GcsError::Rpc {
            address: address.to_string(),
            message: format!("{what} returned status {}: {}", s.code, s.message),
        }),
        _ => Ok(()),
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
