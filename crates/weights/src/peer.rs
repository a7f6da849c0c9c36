//! Chunks between the nodes of one group, over each orchestrator's own
//! port: [`PeerService`] answers, [`PeerClient`] asks.
//!
//! - `GET /weights/v1/<id>/offer`: the node's [`Offer`] of the revision
//!   the group's configuration `<id>` names (JSON).
//! - `GET /weights/v1/<id>/chunk/<file>/<chunk>`: one chunk's bytes.
//! - `GET /weights/v1/<id>/peers?me=<host:port>`: the seed introduces
//!   the nodes that asked it lately (within [`INTRODUCED_FOR`]) to each
//!   other; `me` is where the asking node answers (signed like the
//!   rest, so only the group's nodes are introduced).
//!
//! Every request carries `x-orchestrator-weights: ts=<ms>,nonce=<hex>,
//! mac=<hex>`, an HMAC-SHA256 with a key derived from the group's secret
//! (the native group's, or Ray's auth token) over the method, path, time
//! and nonce; the answer refuses a bad MAC, a time off by more than
//! [`MAX_SKEW`] or a nonce seen before. An offer's answer carries
//! `x-orchestrator-weights-mac` over the request's nonce, the status and
//! the body, so a node trusts the digests only from a member of its
//! group; a chunk needs no MAC, since it is checked against those
//! digests. The secret never crosses the network; the channel is not
//! encrypted (model weights are not secrets of the group's kind, but put
//! TLS or a private network under it where they are).

use crate::http::{HttpClient, HttpError};
use crate::manifest::Offer;
use crate::store::Store;
use ring::hmac;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The request header.
pub const REQUEST_HEADER: &str = "x-orchestrator-weights";
/// The answer header of an offer.
pub const ANSWER_HEADER: &str = "x-orchestrator-weights-mac";
/// The path prefix served.
pub const PREFIX: &str = "/weights/v1/";
/// The largest clock difference accepted between two nodes.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// The largest offer read from a peer.
pub const MAX_OFFER_BYTES: usize = 32 << 20;
/// How long a node that asked the seed stays introduced.
pub const INTRODUCED_FOR: Duration = Duration::from_secs(60);
/// The most nodes introduced.
const MAX_INTRODUCED: usize = 10_000;
/// Chunks read from disk for peers at once; more wait their turn.
const SERVING_AT_ONCE: usize = 4;
const MAX_NONCES: usize = 100_000;
const LABEL: &[u8] = b"orchestrator-weights/1";

/// Why a peer's answer is not used.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The secret is too short.
    #[error(
        "the group secret is shorter than 16 bytes; make one with `head -c 32 /dev/urandom | base64`"
    )]
    ShortSecret,
    /// No answer.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// An answer other than 200.
    #[error("peer {peer} answered {status} for {what}")]
    Status {
        /// The peer.
        peer: String,
        /// Its status.
        status: u16,
        /// What was asked.
        what: String,
    },
    /// An offer without a valid MAC.
    #[error("peer {peer}'s offer is not signed with the group's key; ignored")]
    Unsigned {
        /// The peer.
        peer: String,
    },
    /// An offer that does not parse or validate.
    #[error("peer {peer}'s offer is refused: {reason}")]
    BadOffer {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
}

/// The key of the group's weight transfers. `Debug` never shows it.
pub struct PeerKey {
    key: hmac::Key,
    seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(<redacted>)")
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PeerKey {
    /// The key derived from the group's `secret` (at least 16 bytes), for
    /// this use only.
    pub fn from_secret(secret: &[u8]) -> Result<Self, PeerError> {
        if secret.len() < 16 {
            return Err(PeerError::ShortSecret);
        }
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&root, LABEL);
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn request_text(method: &str, path: &str, ts: u64, nonce: &str) -> String {
        format!("request\n{method}\n{path}\n{ts}\n{nonce}")
    }

    /// The request header's value for `GET path`, and its nonce.
    pub fn sign_request(&self, path: &str) -> (String, String) {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let ts = now_ms();
        let mac = hmac::sign(
            &self.key,
            Self::request_text("GET", path, ts, &nonce).as_bytes(),
        );
        (
            format!("ts={ts},nonce={nonce},mac={}", hex::encode(mac.as_ref())),
            nonce,
        )
    }

    /// Checks a request's header: its MAC, its time, its nonce (once).
    /// Returns the nonce.
    pub fn check_request(&self, path: &str, header: Option<&str>) -> Option<String> {
        let fields: HashMap<&str, &str> = header?
            .split(',')
            .filter_map(|f| f.trim().split_once('='))
            .collect();
        let ts: u64 = fields.get("ts")?.parse().ok()?;
        let nonce = *fields.get("nonce")?;
        let mac = hex::decode(fields.get("mac")?).ok()?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let text = Self::request_text("GET", path, ts, nonce);
        hmac::verify(&self.key, text.as_bytes(), &mac).ok()?;
        let now = now_ms();
        if now.abs_diff(ts) > MAX_SKEW.as_millis() as u64 {
            return None;
        }
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let horizon = now.saturating_sub(2 * MAX_SKEW.as_millis() as u64);
        seen.retain(|_, at| *at >= horizon);
        if seen.len() >= MAX_NONCES || seen.contains_key(nonce) {
            return None;
        }
        seen.insert(nonce.to_string(), ts);
        Some(nonce.to_string())
    }

    fn answer_text(nonce: &str, status: u16, body: &[u8]) -> Vec<u8> {
        let mut text = format!("answer\n{nonce}\n{status}\n").into_bytes();
        text.extend_from_slice(body);
        text
    }

    /// The answer header's value.
    pub fn sign_answer(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        hex::encode(hmac::sign(&self.key, &Self::answer_text(nonce, status, body)).as_ref())
    }

    /// Whether an answer's MAC is the group's.
    pub fn check_answer(&self, nonce: &str, status: u16, body: &[u8], mac: Option<&str>) -> bool {
        mac.and_then(|m| hex::decode(m).ok()).is_some_and(|m| {
            hmac::verify(&self.key, &Self::answer_text(nonce, status, body), &m).is_ok()
        })
    }
}

/// An answer of the service.
#[derive(Debug)]
pub struct PeerAnswer {
    /// The status.
    pub status: u16,
    /// The content type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// The answer header's value, for an offer.
    pub mac: Option<String>,
}

impl PeerAnswer {
    fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: format!("{text}\n").into_bytes(),
            mac: None,
        }
    }
}

/// The revisions this node offers its group; served on the orchestrator's
/// port.
#[derive(Debug)]
pub struct PeerService {
    key: Arc<PeerKey>,
    stores: RwLock<HashMap<String, Arc<Store>>>,
    serving: tokio::sync::Semaphore,
    /// Nodes that asked to be introduced, per id: address -> when.
    askers: Mutex<HashMap<String, HashMap<String, std::time::Instant>>>,
}

impl PeerService {
    /// A service checking requests with `key`.
    pub fn new(key: Arc<PeerKey>) -> Self {
        Self {
            key,
            stores: RwLock::new(HashMap::new()),
            serving: tokio::sync::Semaphore::new(SERVING_AT_ONCE),
            askers: Mutex::new(HashMap::new()),
        }
    }

    /// Records `me` as a node of `id`'s group; the others heard of lately.
    fn introduce(&self, id: &str, me: &str) -> Vec<String> {
        let mut askers = match self.askers.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = std::time::Instant::now();
        let group = askers.entry(id.to_string()).or_default();
        group.retain(|_, at| now.duration_since(*at) < INTRODUCED_FOR);
        if group.len() < MAX_INTRODUCED || group.contains_key(me) {
            group.insert(me.to_string(), now);
        }
        let mut others: Vec<String> = group.keys().filter(|a| *a != me).cloned().collect();
        others.sort();
        others
    }

    /// The nodes that asked to be introduced for `id` lately (what the
    /// seed knows of its group).
    pub fn introduced(&self, id: &str) -> Vec<String> {
        let askers = match self.askers.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = std::time::Instant::now();
        let mut nodes: Vec<String> = askers
            .get(id)
            .map(|group| {
                group
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) < INTRODUCED_FOR)
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes
    }

    /// Offers `store` under `id` (the group's name for the revision).
    pub fn register(&self, id: &str, store: Arc<Store>) {
        if let Ok(mut stores) = self.stores.write() {
            stores.insert(id.to_string(), store);
        }
    }

    /// Stops offering `id`.
    pub fn withdraw(&self, id: &str) {
        if let Ok(mut stores) = self.stores.write() {
            stores.remove(id);
        }
    }

    /// Whether `path` is this service's.
    pub fn serves(path: &str) -> bool {
        path.starts_with(PREFIX)
    }

    /// The answer to `GET target` (path and query) with the request
    /// header `auth`.
    pub async fn answer(&self, target: &str, auth: Option<&str>) -> PeerAnswer {
        let Some(nonce) = self.key.check_request(target, auth) else {
            return PeerAnswer::text(401, "unauthorized");
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let parts: Vec<&str> = path
            .strip_prefix(PREFIX)
            .unwrap_or_default()
            .split('/')
            .collect();
        let store = |id: &str| self.stores.read().ok().and_then(|s| s.get(id).cloned());
        match parts.as_slice() {
            [id, "offer"] => {
                let Some(store) = store(id) else {
                    return PeerAnswer::text(404, "no such revision here");
                };
                let body = serde_json::to_vec(&store.offer()).unwrap_or_default();
                PeerAnswer {
                    status: 200,
                    content_type: "application/json",
                    mac: Some(self.key.sign_answer(&nonce, 200, &body)),
                    body,
                }
            }
            [id, "peers"] => {
                let me = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("me="))
                    .filter(|me| valid_address(me));
                let Some(me) = me else {
                    return PeerAnswer::text(400, "give me=<host:port>");
                };
                let body = serde_json::to_vec(&self.introduce(id, me)).unwrap_or_default();
                PeerAnswer {
                    status: 200,
                    content_type: "application/json",
                    mac: Some(self.key.sign_answer(&nonce, 200, &body)),
                    body,
                }
            }
            [id, "chunk", file, chunk] => {
                let (Some(store), Ok(file), Ok(chunk)) =
                    (store(id), file.parse::<usize>(), chunk.parse::<u32>())
                else {
                    return PeerAnswer::text(404, "no such chunk here");
                };
                let Ok(Ok(_permit)) =
                    tokio::time::timeout(Duration::from_secs(30), self.serving.acquire()).await
                else {
                    return PeerAnswer::text(503, "busy");
                };
                match tokio::task::spawn_blocking(move || store.read(file, chunk)).await {
                    Ok(Ok(body)) => PeerAnswer {
                        status: 200,
                        content_type: "application/octet-stream",
                        body,
                        mac: None,
                    },
                    _ => PeerAnswer::text(404, "no such chunk here"),
                }
            }
            _ => PeerAnswer::text(404, "not found"),
        }
    }
}

/// `host:port` with a host of letters, digits, `.`, `-` or `:` (IPv6 in
/// brackets), at most 255 bytes.
fn valid_address(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    text.len() <= 255
        && !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// Asks peers for offers and chunks.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: HttpClient,
    key: Arc<PeerKey>,
    timeout: Duration,
}

impl PeerClient {
    /// A client signing with `key`, each answer bounded by `timeout`.
    pub fn new(key: Arc<PeerKey>, timeout: Duration) -> Result<Self, PeerError> {
        Ok(Self {
            http: HttpClient::new()?,
            key,
            timeout,
        })
    }

    async fn get(
        &self,
        peer: &str,
        path: &str,
        limit: usize,
    ) -> Result<(crate::http::Answer, String), PeerError> {
        let (header, nonce) = self.key.sign_request(path);
        let url = format!("http://{peer}{path}");
        let answer = self
            .http
            .get(&url, &[(REQUEST_HEADER, header)], limit, self.timeout)
            .await?;
        if answer.status != 200 {
            return Err(PeerError::Status {
                peer: peer.to_string(),
                status: answer.status,
                what: path.to_string(),
            });
        }
        Ok((answer, nonce))
    }

    /// `peer`'s offer of `id`, checked.
    pub async fn offer(&self, peer: &str, id: &str) -> Result<Offer, PeerError> {
        let (answer, nonce) = self
            .get(peer, &format!("{PREFIX}{id}/offer"), MAX_OFFER_BYTES)
            .await?;
        if !self
            .key
            .check_answer(&nonce, 200, &answer.body, answer.header(ANSWER_HEADER))
        {
            return Err(PeerError::Unsigned {
                peer: peer.to_string(),
            });
        }
        let offer: Offer =
            serde_json::from_slice(&answer.body).map_err(|e| PeerError::BadOffer {
                peer: peer.to_string(),
                reason: e.to_string(),
            })?;
        offer.validate().map_err(|e| PeerError::BadOffer {
            peer: peer.to_string(),
            reason: e.to_string(),
        })?;
        Ok(offer)
    }

    /// Says to `seed` that this node answers at `me`; the other nodes of
    /// the group it heard of lately.
    pub async fn introduce(
        &self,
        seed: &str,
        id: &str,
        me: &str,
    ) -> Result<Vec<String>, PeerError> {
        let (answer, nonce) = self
            .get(seed, &format!("{PREFIX}{id}/peers?me={me}"), 1 << 20)
            .await?;
        if !self
            .key
            .check_answer(&nonce, 200, &answer.body, answer.header(ANSWER_HEADER))
        {
            return Err(PeerError::Unsigned {
                peer: seed.to_string(),
            });
        }
        let peers: Vec<String> =
            serde_json::from_slice(&answer.body).map_err(|e| PeerError::BadOffer {
                peer: seed.to_string(),
                reason: e.to_string(),
            })?;
        Ok(peers.into_iter().filter(|p| valid_address(p)).collect())
    }

    /// Chunk `chunk` of file `file` of `id` from `peer`, at most `len`
    /// bytes (the caller checks its digest).
    pub async fn chunk(
        &self,
        peer: &str,
        id: &str,
        file: usize,
        chunk: u32,
        len: u64,
    ) -> Result<Vec<u8>, PeerError> {
        let path = format!("{PREFIX}{id}/chunk/{file}/{chunk}");
        let (answer, _) = self.get(peer, &path, len as usize).await?;
        Ok(answer.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_accepted_once_and_only_with_the_groups_key() {
        let key = PeerKey::from_secret(b"group-secret-0123456789").unwrap();
        let other = PeerKey::from_secret(b"another-secret-0123456789").unwrap();
        let path = "/weights/v1/abc/offer";
        let (header, nonce) = key.sign_request(path);
        assert!(other.check_request(path, Some(&header)).is_none());
        assert!(
            key.check_request("/weights/v1/abc/chunk/0/0", Some(&header))
                .is_none()
        );
        assert_eq!(key.check_request(path, Some(&header)), Some(nonce.clone()));
        // Replayed.
        assert!(key.check_request(path, Some(&header)).is_none());
        assert!(key.check_request(path, None).is_none());
        let mac = key.sign_answer(&nonce, 200, b"{}");
        assert!(key.check_answer(&nonce, 200, b"{}", Some(&mac)));
        assert!(!key.check_answer(&nonce, 200, b"{ }", Some(&mac)));
        assert!(!other.check_answer(&nonce, 200, b"{}", Some(&mac)));
        assert!(matches!(
            PeerKey::from_secret(b"short"),
            Err(PeerError::ShortSecret)
        ));
        assert_eq!(format!("{key:?}"), "PeerKey(<redacted>)");
    }
}
