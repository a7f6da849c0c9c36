//! `[serve.weights]` on this node: the fetch runs beside the start and the
//! wait (the Ray head or native leader seeds it from the origin; every
//! other node joins through the seed's orchestrator, which introduces the
//! nodes to each other), its progress goes to `/status` (`weights`), the
//! metrics, node health (the launch waits for every serving node's copy)
//! and a log line every 10 s, and its chunks are offered on the
//! endpoints' port, signed with the group's secret (the native group's;
//! behind Ray, `$ORCHESTRATOR_GROUP_SECRET` or Ray's own auth token).
//! Without a secret every node fetches from the origin on its own. Entry
//! point: [`WeightsPlan::new`], run by the lifecycle ([`spawn`]).

use crate::config::WeightsConfig;
use crate::endpoints::Status;
use orchestrator_weights::{
    Fetcher, Origin, PeerClient, PeerKey, PeerService, Peers, Progress, Role,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the progress reaches `/status`.
const PUBLISH: Duration = Duration::from_secs(1);
/// How often a progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// This node's part in fetching `[serve.weights]`.
#[derive(Clone)]
pub struct WeightsPlan {
    /// The section.
    pub config: WeightsConfig,
    /// Seed (the head or leader) or join.
    pub role: Role,
    /// How the other nodes are found.
    pub peers: Peers,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for WeightsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightsPlan")
            .field("role", &self.role)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl WeightsPlan {
    /// The plan of a node of a group: `seed` for the head or leader, whose
    /// orchestrator answers at `seed_address`; this one answers at `me`;
    /// `secret` is the group's. `None` when `[serve.weights]` is off.
    pub fn new(
        config: &WeightsConfig,
        seed: bool,
        seed_address: String,
        me: String,
        secret: Option<Vec<u8>>,
    ) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        let sharing = config.share && secret.is_some();
        let (role, peers) = if seed || !sharing {
            (Role::Seed, Peers::Fixed(Vec::new()))
        } else {
            (
                Role::Join,
                Peers::Via {
                    seed: seed_address,
                    me,
                },
            )
        };
        Some(Self {
            config: config.clone(),
            role,
            peers,
            secret: secret.filter(|_| config.share),
        })
    }

    /// The plan of a node alone (`orchestrator local`: one process holds
    /// the whole group, so it fetches once).
    pub fn alone(config: &WeightsConfig) -> Option<Self> {
        Self::new(config, true, String::new(), String::new(), None)
    }
}

/// The group's secret behind Ray: `$ORCHESTRATOR_GROUP_SECRET` (or the
/// file), else Ray's auth token when `RAY_AUTH_MODE=token`
/// (`RAY_AUTH_TOKEN`, or the file `RAY_AUTH_TOKEN_PATH` names).
pub(crate) fn ray_group_secret(file: Option<&std::path::Path>) -> Option<Vec<u8>> {
    if let Ok(Some(secret)) = crate::config::group_secret(file) {
        return Some(secret.bytes);
    }
    if std::env::var("RAY_AUTH_MODE").ok().as_deref() != Some("token") {
        return None;
    }
    if let Some(token) = std::env::var_os("RAY_AUTH_TOKEN").filter(|t| !t.is_empty()) {
        return Some(token.as_encoded_bytes().to_vec());
    }
    let path = std::env::var_os("RAY_AUTH_TOKEN_PATH")?;
    let bytes = std::fs::read(path).ok()?;
    Some(bytes.trim_ascii().to_vec()).filter(|b| !b.is_empty() && b.len() <= 64 * 1024)
}

/// Starts `plan`'s fetch, reporting to `status`; it stops when the
/// returned task is dropped.
pub(crate) fn spawn(
    plan: Option<&WeightsPlan>,
    status: &Arc<Status>,
) -> Option<crate::supervision::Background> {
    let plan = plan?.clone();
    let status = Arc::clone(status);
    Some(crate::supervision::Background::spawn(run(plan, status)))
}

fn failed(status: &Status, origin: String, error: String) {
    tracing::error!("weights: {error}");
    status.weights(Progress {
        state: orchestrator_weights::FetchState::Failed,
        origin,
        error: Some(error),
        ..Progress::default()
    });
}

/// The fetcher of `plan`, sharing with the group where it can.
fn fetcher(plan: &WeightsPlan, status: &Status) -> Result<Fetcher, String> {
    let spec = plan
        .config
        .origin_spec()
        .ok_or("serve.weights.origin is not set")?;
    let timeout = Duration::from_secs(plan.config.timeout_seconds);
    let origin = Origin::new(spec, timeout).map_err(|e| e.to_string())?;
    let fetcher = Fetcher::new(origin, plan.config.settings(), plan.role);
    let Some(secret) = &plan.secret else {
        if plan.config.share {
            tracing::warn!(
                "weights: no group secret (ORCHESTRATOR_GROUP_SECRET, native.secret-file, or Ray's RAY_AUTH_TOKEN): this node fetches from the origin without its peers"
            );
        }
        return Ok(fetcher);
    };
    let key = Arc::new(PeerKey::from_secret(secret.trim_ascii()).map_err(|e| e.to_string())?);
    let service = status.peer_service(|| Arc::new(PeerService::new(Arc::clone(&key))));
    let client = PeerClient::new(key, timeout).map_err(|e| e.to_string())?;
    Ok(fetcher.with_peers(plan.peers.clone(), client, service))
}

async fn run(plan: WeightsPlan, status: Arc<Status>) {
    let fetcher = match fetcher(&plan, &status) {
        Ok(f) => f,
        Err(e) => return failed(&status, plan.config.url.clone(), e),
    };
    let progress = fetcher.progress();
    let snapshot = || progress.lock().map(|p| p.clone()).unwrap_or_default();
    let fetch = fetcher.run();
    tokio::pin!(fetch);
    let mut tick = tokio::time::interval(PUBLISH);
    let mut logged = Instant::now();
    loop {
        tokio::select! {
            result = &mut fetch => {
                status.weights(snapshot());
                let p = snapshot();
                match result {
                    Ok(path) => tracing::info!(
                        path = %path.display(),
                        cached = p.cached,
                        seconds = format!("{:.1}", p.seconds),
                        origin_mib = p.from_origin_bytes >> 20,
                        peers_mib = p.from_peers_bytes.values().sum::<u64>() >> 20,
                        "weights: on this node"
                    ),
                    Err(e) => tracing::error!("weights: {e}"),
                }
                return;
            }
            _ = tick.tick() => {
                let p = snapshot();
                if logged.elapsed() >= LOG_EVERY && p.total_bytes > 0 {
                    logged = Instant::now();
                    tracing::info!("weights: {}", line(&p));
                }
                status.weights(p);
            }
        }
    }
}

/// The progress in one line: bytes, rate, from whom.
pub(crate) fn line(p: &Progress) -> String {
    let peers: u64 = p.from_peers_bytes.values().sum();
    format!(
        "{} of {} MiB ({:.0} MB/s; origin {} MiB, peers {} MiB from {})",
        p.done_bytes >> 20,
        p.total_bytes >> 20,
        p.bytes_per_second / 1e6,
        p.from_origin_bytes >> 20,
        peers >> 20,
        p.from_peers_bytes.len()
    )
}
