//! Authentication of the native group's rendezvous, both ways, with a
//! secret every pod of the group holds (a Kubernetes Secret, by env or
//! file). Entry point: [`GroupKey`].
//!
//! Every request a rank sends is wrapped in a [`Sealed`] envelope: the
//! message, the sender's rank, the time, a fresh nonce and an HMAC-SHA256
//! over all of them and the path. The leader checks the MAC, that the time
//! is within [`MAX_SKEW`], that the nonce was not seen before (replays),
//! and that the message is about the rank that signed it. Every answer is
//! wrapped in a [`SealedAnswer`] whose MAC covers the request's nonce,
//! the status and the body, so a rank obeys only its leader's answer to
//! its own request. The secret itself never crosses the network; the
//! channel is not encrypted, so secret launch values are not sent either
//! (each rank takes them from its own environment).

use ring::hmac;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable holding the group secret.
pub(crate) const SECRET_ENV: &str = crate::config::SECRET_ENV;
/// The shortest secret accepted, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 16;
/// The largest clock difference accepted between a rank and its leader.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(60);
/// Nonces remembered at most (older ones age out after twice
/// [`MAX_SKEW`]); past it, requests are refused until some age out.
const MAX_NONCES: usize = 200_000;
const PROTOCOL: &str = "orchestrator-native/1";

/// What is wrong with a group secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the group secret (from {0}) is shorter than {MIN_SECRET_BYTES} bytes; make one with `head -c 32 /dev/urandom | base64` and give every pod of the group the same"
    )]
    TooShort(String),
    /// The file cannot be read.
    #[error("native.secret-file {path}: {reason}; mount the group's Secret there")]
    File {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The group's shared key. `Debug` never shows it.
#[derive(Clone)]
pub struct GroupKey {
    key: hmac::Key,
    seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupKey(<redacted>)")
    }
}

/// A request as sent on the wire when the group has a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct Sealed {
    /// The rank that signed it.
    pub rank: u32,
    /// Its clock, ms since the epoch.
    pub(crate) time_ms: u64,
    /// Fresh for every request (hex).
    pub(crate) nonce: String,
    /// HMAC-SHA256 (hex).
    pub mac: String,
    /// The message (JSON text).
    pub body: String,
}

/// An answer as sent on the wire when the group has a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct SealedAnswer {
    /// HMAC-SHA256 over the request's nonce, status and body (hex).
    pub mac: String,
    /// The answer (JSON text).
    pub body: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl GroupKey {
    /// The key from the secret's bytes (surrounding whitespace removed).
    pub fn new(secret: &[u8], from: &str) -> Result<Self, SecretError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(from.to_string()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            seen: Arc::default(),
        })
    }

    /// A random key (a group in one process: `local --backend native`).
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            seen: Arc::default(),
        }
    }

    /// The group's key from `$ORCHESTRATOR_GROUP_SECRET` or `file`; none
    /// when neither is set.
    pub(crate) fn from_env_or_file(
        file: Option<&std::path::Path>,
    ) -> Result<Option<Self>, SecretError> {
        let secret = crate::config::group_secret(file).map_err(|e| SecretError::File {
            path: e.path,
            reason: e.reason,
        })?;
        match secret {
            Some(secret) => Self::new(&secret.bytes, &secret.from).map(Some),
            None => Ok(None),
        }
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(PROTOCOL.as_bytes());
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        hex::encode(ctx.sign().as_ref())
    }

    fn check(&self, parts: &[&str], mac: &str) -> bool {
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        let mut text = Vec::new();
        text.extend_from_slice(PROTOCOL.as_bytes());
        for part in parts {
            text.extend_from_slice(&(part.len() as u64).to_be_bytes());
            text.extend_from_slice(part.as_bytes());
        }
        hmac::verify(&self.key, &text, &tag).is_ok()
    }

    /// Wraps a rank's request to `path`; returns the wire text and the
    /// nonce its answer must be bound to.
    pub fn seal(&self, rank: u32, path: &str, body: String) -> (String, String) {
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let nonce = hex::encode(nonce);
        let time_ms = now_ms();
        let rank_text = rank.to_string();
        let time_text = time_ms.to_string();
        let mac = self.mac(&["request", path, &rank_text, &time_text, &nonce, &body]);
        let sealed = Sealed {
            rank,
            time_ms,
            nonce: nonce.clone(),
            mac,
            body,
        };
        (serde_json::to_string(&sealed).unwrap_or_default(), nonce)
    }

    /// Checks a request to `path` on the leader: the signing rank, the
    /// nonce (for the answer) and the message, or why it is refused.
    pub fn open(&self, path: &str, wire: &[u8]) -> Result<(u32, String, String), Refused> {
        let sealed: Sealed = serde_json::from_slice(wire).map_err(|_| Refused::NotSealed)?;
        let rank_text = sealed.rank.to_string();
        let time_text = sealed.time_ms.to_string();
        if !self.check(
            &[
                "request",
                path,
                &rank_text,
                &time_text,
                &sealed.nonce,
                &sealed.body,
            ],
            &sealed.mac,
        ) {
            return Err(Refused::BadSignature(sealed.rank));
        }
        let now = now_ms();
        let skew = MAX_SKEW.as_millis() as u64;
        if sealed.time_ms.abs_diff(now) > skew {
            return Err(Refused::Skew {
                rank: sealed.rank,
                off_ms: sealed.time_ms.abs_diff(now),
                max_ms: skew,
            });
        }
        let mut seen = self.seen.lock().map_err(|_| Refused::NonceTable)?;
        if seen.len() >= MAX_NONCES / 2 {
            seen.retain(|_, at| now.saturating_sub(*at) <= 2 * skew);
        }
        if seen.len() >= MAX_NONCES {
            return Err(Refused::TooMany);
        }
        if seen.insert(sealed.nonce.clone(), now).is_some() {
            return Err(Refused::Replayed(sealed.rank));
        }
        Ok((sealed.rank, sealed.nonce, sealed.body))
    }

    /// Wraps the leader's answer to the request with `nonce`.
    pub(crate) fn seal_answer(&self, path: &str, nonce: &str, status: u16, body: String) -> String {
        let mac = self.mac(&["answer", path, nonce, &status.to_string(), &body]);
        serde_json::to_string(&SealedAnswer { mac, body }).unwrap_or_default()
    }

    /// Checks the leader's answer to the request with `nonce`: its body,
    /// or why it is not the leader's.
    pub(crate) fn open_answer(
        &self,
        path: &str,
        nonce: &str,
        status: u16,
        wire: &str,
    ) -> Result<String, Refused> {
        let sealed: SealedAnswer =
            serde_json::from_str(wire).map_err(|_| Refused::AnswerNotSealed)?;
        if !self.check(
            &["answer", path, nonce, &status.to_string(), &sealed.body],
            &sealed.mac,
        ) {
            return Err(Refused::AnswerBadSignature);
        }
        Ok(sealed.body)
    }
}

/// Why a request (on the leader) or an answer (on a rank) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The request is not in the sealed shape.
    #[error("the request is not sealed with the group secret")]
    NotSealed,
    /// The request's MAC does not verify.
    #[error("a request claiming rank {0} is not signed with this group's secret")]
    BadSignature(u32),
    /// The request's time is too far from the leader's clock.
    #[error(
        "rank {rank}'s request is {off_ms} ms away from the leader's clock (more than {max_ms} ms): synchronise the nodes' clocks"
    )]
    Skew {
        /// The rank it claims.
        rank: u32,
        /// How far off.
        off_ms: u64,
        /// The most allowed.
        max_ms: u64,
    },
    /// The nonce table's lock was poisoned.
    #[error("the nonce table is unusable")]
    NonceTable,
    /// Too many requests within the replay window.
    #[error("too many requests within a minute; try again")]
    TooMany,
    /// A nonce seen before.
    #[error("a replayed request claiming rank {0}")]
    Replayed(u32),
    /// The answer is not in the sealed shape.
    #[error(
        "the answer is not sealed with the group secret (another process answers at the leader's address, or the leader runs without a secret)"
    )]
    AnswerNotSealed,
    /// The answer's MAC does not verify.
    #[error(
        "the answer is not signed with this group's secret (another process answers at the leader's address, or its secret differs)"
    )]
    AnswerBadSignature,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> GroupKey {
        GroupKey::new(secret.as_bytes(), "test").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_sealed_request_opens_once_and_only_with_the_same_secret_and_path() {
        let k = key("0123456789abcdef-group");
        let (wire, nonce) = k.seal(2, "/native/v1/heartbeat", "{\"rank\":2}".into());
        let opened = k.open("/native/v1/heartbeat", wire.as_bytes());
        assert_eq!(
            opened
                .as_ref()
                .ok()
                .map(|(r, n, b)| (*r, n.clone(), b.clone())),
            Some((2, nonce.clone(), "{\"rank\":2}".to_string()))
        );
        // Replayed.
        let again = k.open("/native/v1/heartbeat", wire.as_bytes());
        assert_eq!(again, Err(Refused::Replayed(2)));
        // Another path, another secret, a changed rank or body.
        let (wire, _) = k.seal(2, "/native/v1/heartbeat", "{}".into());
        assert!(k.open("/native/v1/register", wire.as_bytes()).is_err());
        assert!(
            key("another-secret-of-16")
                .open("/native/v1/heartbeat", wire.as_bytes())
                .is_err()
        );
        let forged = wire.replace("\"rank\":2", "\"rank\":1");
        assert!(k.open("/native/v1/heartbeat", forged.as_bytes()).is_err());
        // Not sealed at all.
        assert!(k.open("/native/v1/heartbeat", b"{\"rank\":1}").is_err());
    }

    #[test]
    fn an_answer_opens_only_for_its_request() {
        let k = key("0123456789abcdef-group");
        let answer = k.seal_answer("/p", "nonce-1", 200, "{\"ok\":1}".into());
        assert_eq!(
            k.open_answer("/p", "nonce-1", 200, &answer).ok().as_deref(),
            Some("{\"ok\":1}")
        );
        assert!(k.open_answer("/p", "nonce-2", 200, &answer).is_err());
        assert!(k.open_answer("/p", "nonce-1", 409, &answer).is_err());
        assert!(k.open_answer("/p", "nonce-1", 200, "{\"ok\":1}").is_err());
        assert!(
            key("another-secret-of-16")
                .open_answer("/p", "nonce-1", 200, &answer)
                .is_err()
        );
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_key() {
        assert!(GroupKey::new(b"short", "X").is_err());
        let shown = format!("{:?}", key("0123456789abcdef-canary"));
        assert!(!shown.contains("canary"));
    }

    /// Prints what sealing costs one heartbeat round trip (request sealed
    /// and opened, answer sealed and opened) with a 2 KB message:
    /// `cargo test -p orchestrator-phases --release --lib -- --ignored
    /// heartbeat_sealing_cost --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn heartbeat_sealing_cost() {
        let k = key("0123456789abcdef-group");
        let body = "x".repeat(2048);
        let rounds = 20_000;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let (wire, _) = k.seal(1, "/native/v1/heartbeat", body.clone());
            let (_, nonce, opened) = k
                .open("/native/v1/heartbeat", wire.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            let answer = k.seal_answer("/native/v1/heartbeat", &nonce, 200, opened);
            let _ = k.open_answer("/native/v1/heartbeat", &nonce, 200, &answer);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        println!("FIGURE heartbeat_sealing_us_per_round_trip={us:.1}");
    }
}
