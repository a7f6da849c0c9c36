//! Whether a node's raylet answers, asked of the raylet itself. The GCS
//! declares a frozen or cut-off raylet dead only after its health checks
//! fail several times (about 30 s under Ray's defaults); until then it
//! lists the node as alive. One harmless call with a short deadline tells
//! sooner. Entry point: [`RayletProber`] (connections kept between asks,
//! many nodes at once).

use crate::proto::GetSystemConfigRequest;
use crate::proto::gcs_node_info::GcsNodeState;
use crate::proto::node_manager_service_client::NodeManagerServiceClient;
use crate::{GcsClient, GcsError, RayAuth, endpoint, error_chain};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// What a raylet did when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RayletAnswer {
    /// It answered (a reply, or a status it sent itself).
    Answered,
    /// It accepted the connection or not, but sent nothing within the
    /// limit: frozen, overloaded, or cut off by the network.
    Silent,
    /// It could not be asked: nothing listens there, or the address is
    /// not one.
    Unreachable(String),
}

/// Where each node's raylet listens (node id in hex, as
/// [`node_from_proto`](crate::node_from_proto) writes it, to `HOST:PORT`),
/// filled by the membership watcher as nodes register
/// ([`watch_membership_recording`](crate::watch_membership_recording)),
/// so asking a node needs no call to the GCS.
#[derive(Debug, Clone, Default)]
pub struct RayletBook(Arc<Mutex<HashMap<String, String>>>);

impl RayletBook {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records (or forgets, for a dead node) one node's raylet.
    pub(crate) fn record(&self, info: &crate::proto::GcsNodeInfo) {
        let id = hex::encode(&info.node_id);
        let mut book = self.lock();
        if info.state == GcsNodeState::Alive as i32 {
            book.insert(id, raylet_address(info));
        } else {
            book.remove(&id);
        }
    }

    /// The raylet of node `id`, when known.
    pub fn get(&self, id: &str) -> Option<String> {
        self.lock().get(id).cloned()
    }

    /// Whether every node of `ids` has its raylet recorded.
    fn knows_all(&self, ids: &[String]) -> bool {
        let book = self.lock();
        ids.iter().all(|id| book.contains_key(id))
    }
}

/// `HOST:PORT` of a node's raylet (brackets around an IPv6 host).
pub(crate) fn raylet_address(info: &crate::proto::GcsNodeInfo) -> String {
    let host = &info.node_manager_address;
    if host.contains(':') {
        format!("[{host}]:{}", info.node_manager_port)
    } else {
        format!("{host}:{}", info.node_manager_port)
    }
}

/// At most this many raylets are asked at once.
const ASKED_AT_ONCE: usize = 512;

/// Asks many raylets at once whether they answer, keeping one HTTP/2
/// connection per raylet between asks (a second ask of a node costs one
/// call, no handshake) and one to the GCS, asked only for raylets the
/// [`RayletBook`] does not know.
#[derive(Debug)]
pub struct RayletProber {
    gcs: String,
    auth: RayAuth,
    book: RayletBook,
    channels: Mutex<HashMap<String, Channel>>,
    gcs_client: tokio::sync::Mutex<Option<GcsClient>>,
    asking: Arc<tokio::sync::Semaphore>,
}

impl RayletProber {
    /// A prober for the cluster whose GCS is at `gcs`, with the
    /// credentials `auth`, reading raylet addresses from `book`.
    pub fn new(gcs: impl Into<String>, auth: RayAuth, book: RayletBook) -> Self {
        Self {
            gcs: gcs.into(),
            auth,
            book,
            channels: Mutex::default(),
            gcs_client: tokio::sync::Mutex::default(),
            asking: Arc::new(tokio::sync::Semaphore::new(ASKED_AT_ONCE)),
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills the book from the GCS when some of `ids` are not in it.
    async fn look_up(&self, ids: &[String], limit: Duration) -> Result<(), GcsError> {
        if self.book.knows_all(ids) {
            return Ok(());
        }
        let mut client = self.gcs_client.lock().await;
        // Another ask may have filled the book while this one waited.
        if self.book.knows_all(ids) {
            return Ok(());
        }
        if client.is_none() {
            *client = Some(
                GcsClient::connect_with(&self.gcs, limit.max(CONNECT_FLOOR), self.auth.clone())
                    .await?,
            );
        }
        if let Some(c) = client.as_ref() {
            match c.all_node_info().await {
                Ok(nodes) => nodes.iter().for_each(|n| self.book.record(n)),
                Err(e) => {
                    *client = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The kept connection to `address`, made (lazily: it connects on
    /// first use, and again after a failure) when there is none.
    fn channel(&self, address: &str, limit: Duration) -> Result<Channel, String> {
        if let Some(c) = self.channels().get(address) {
            return Ok(c.clone());
        }
        let channel = endpoint(address)
            .map_err(|e| e.to_string())?
            .connect_timeout(limit)
            .connect_lazy();
        Ok(self
            .channels()
            .entry(address.to_string())
            .or_insert(channel)
            .clone())
    }

    /// Asks each node of `ids` whose raylet is known (from the book, else
    /// from the GCS) to answer within `limit`, all at once, and returns
    /// each node's id, raylet address and answer. A node the GCS does not
    /// list as alive is left out.
    pub async fn ask(
        &self,
        ids: &[String],
        limit: Duration,
    ) -> Result<Vec<(String, String, RayletAnswer)>, GcsError> {
        self.look_up(ids, limit).await?;
        let mut asks = tokio::task::JoinSet::new();
        for id in ids {
            let Some(address) = self.book.get(id) else {
                continue;
            };
            let channel = self.channel(&address, limit);
            let (auth, asking, id) = (self.auth.clone(), self.asking.clone(), id.clone());
            asks.spawn(async move {
                let _permit = asking.acquire_owned().await;
                let answer = match channel {
                    Ok(channel) => ask_on(channel, limit, &auth).await,
                    Err(why) => RayletAnswer::Unreachable(why),
                };
                (id, address, answer)
            });
        }
        let mut answers = Vec::with_capacity(asks.len());
        while let Some(done) = asks.join_next().await {
            let Ok(answer) = done else { continue };
            if answer.2 != RayletAnswer::Answered {
                // A fresh connection next time, not one stuck on a
                // frozen peer.
                self.channels().remove(&answer.1);
            }
            answers.push(answer);
        }
        Ok(answers)
    }
}

/// The shortest connect timeout used for the GCS lookup.
const CONNECT_FLOOR: Duration = Duration::from_millis(500);

/// Asks the raylet on `channel` for Ray's system configuration, waiting
/// up to `limit` in all, with the credentials `auth` (a raylet of a
/// cluster with token authentication refuses calls without them).
async fn ask_on(channel: Channel, limit: Duration, auth: &RayAuth) -> RayletAnswer {
    let mut request = tonic::Request::new(GetSystemConfigRequest {});
    request.set_timeout(limit);
    auth.apply(&mut request);
    let mut client = NodeManagerServiceClient::new(channel);
    match tokio::time::timeout(limit, client.get_system_config(request)).await {
        Ok(Ok(_)) => RayletAnswer::Answered,
        // A status the raylet sent: it is alive, of another version
        // perhaps (or refusing these credentials, which the GCS took).
        Ok(Err(s))
            if matches!(
                s.code(),
                Code::Unimplemented | Code::InvalidArgument | Code::Unauthenticated
            ) =>
        {
            RayletAnswer::Answered
        }
        Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
            RayletAnswer::Silent
        }
        Ok(Err(s)) => {
            let text = match std::error::Error::source(&s) {
                Some(cause) => error_chain(cause),
                None => s.message().to_string(),
            };
            if text.contains("timed out") {
                RayletAnswer::Silent
            } else {
                RayletAnswer::Unreachable(format!("cannot connect: {text}"))
            }
        }
        Err(_) => RayletAnswer::Silent,
    }
}
