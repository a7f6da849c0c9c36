//! Fetching one revision onto this node. Entry point: [`Fetcher::run`].
//!
//! The manifest comes from the origin (the seed: the head or leader) or
//! from the first peer that offers it (every other node; the origin
//! itself only when no peer offers within `peer-wait`). Then, until every
//! chunk is here, up to `parallel` chunks are in flight: a chunk that a
//! peer offers is taken from that peer (the one this node asks least,
//! the order shuffled so that joiners take different chunks and trade
//! them), checked against the digest that peer's signed offer names; a
//! chunk no peer offers comes from the origin at once on the seed, and on
//! the other nodes only once no peer gained a chunk for `stall` (the seed
//! died: the group routes around it). A peer that sent a corrupt chunk,
//! or did not answer, is not asked for a while. A complete revision is
//! used as it is, without the origin, when the origin is gone.

use crate::manifest::{Manifest, Offer};
use crate::origin::{Origin, OriginError};
use crate::peer::{PeerClient, PeerService};
use crate::store::{Store, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How this node finds the group's other nodes (`host:port` of their
/// orchestrators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// These, always.
    Fixed(Vec<String>),
    /// The seed (the head or leader), and the nodes it introduces: each
    /// node asking it says where it answers itself (`me`), and hears of
    /// the others that asked lately. When the seed is gone, the last
    /// nodes heard of stay.
    Via {
        /// The seed's orchestrator.
        seed: String,
        /// This node's orchestrator, as the others reach it.
        me: String,
    },
}

/// Failed origin requests in a row after which the fetch fails.
const ORIGIN_ATTEMPTS: u32 = 6;
/// How long a peer that failed is not asked.
const PEER_PAUSE: Duration = Duration::from_secs(5);
/// How long a peer that sent [`CORRUPT_LIMIT`] corrupt chunks is not
/// asked (the chunk itself is never asked of it again).
const CORRUPT_PAUSE: Duration = Duration::from_secs(120);
/// Corrupt chunks from one peer after which it is paused.
const CORRUPT_LIMIT: u32 = 3;
/// How often peers' offers are read again.
const OFFER_REFRESH: Duration = Duration::from_millis(500);

/// Where this node stands.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FetchState {
    /// Reading the manifest.
    #[default]
    Listing,
    /// Fetching chunks.
    Fetching,
    /// Checking whole files.
    Verifying,
    /// Every file here.
    Done,
    /// Given up (see `error`).
    Failed,
}

/// The fetch's progress, for `/status`, the metrics and the log.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    /// Where it stands.
    pub state: FetchState,
    /// The origin, in words.
    pub origin: String,
    /// The model.
    pub repo: String,
    /// The revision, once resolved.
    pub revision: String,
    /// The folder vLLM is given, once known.
    pub path: Option<PathBuf>,
    /// The revision's size.
    pub total_bytes: u64,
    /// Bytes here, verified.
    pub done_bytes: u64,
    /// Bytes this run took from the origin.
    pub from_origin_bytes: u64,
    /// Bytes this run took from each peer.
    pub from_peers_bytes: BTreeMap<String, u64>,
    /// Bytes per second this run.
    pub bytes_per_second: f64,
    /// Whether the revision was complete here before this run.
    pub cached: bool,
    /// Chunks refused because their digest was wrong.
    pub corrupt_chunks: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// Seconds this run took, once done.
    pub seconds: f64,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The origin could not give what was needed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// This node's disk.
    #[error("weights store: {0}")]
    Store(#[from] StoreError),
    /// A task of the fetch ended abnormally.
    #[error("weights fetch: {0}")]
    Task(String),
}

/// What this node's part in the group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It lists the origin and takes what no peer has from it at once.
    Seed,
    /// It takes the manifest and chunks from peers; the origin only when
    /// no peer offers.
    Join,
}

/// How a fetch goes.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// The cache folder (revisions under `<org>--<name>/<revision>`).
    pub cache: PathBuf,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Chunks in flight.
    pub parallel: usize,
    /// How long a joiner waits for a peer's offer before it lists the
    /// origin itself.
    pub peer_wait: Duration,
    /// How long a joiner waits for peers to gain a chunk before it takes
    /// it from the origin.
    pub stall: Duration,
}

/// A chunk's outcome: which, from where, taken or why not.
type Taken = (usize, u32, Source, Result<(), Failure>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Origin,
    Peer(String),
}

/// One revision's fetch on this node.
pub struct Fetcher {
    origin: Origin,
    settings: FetchSettings,
    role: Role,
    peers: Peers,
    /// The nodes the seed introduced last.
    introduced: Mutex<Vec<String>>,
    client: Option<PeerClient>,
    service: Option<Arc<PeerService>>,
    progress: Arc<Mutex<Progress>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("origin", &self.origin)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The chunk loop's view of the peers.
struct Swarm {
    offers: Vec<(String, Offer)>,
    refreshed: Option<Instant>,
    paused: HashMap<String, Instant>,
    asked: HashMap<String, usize>,
    /// Chunks any peer offers, counted: when it stops growing, peers
    /// gain nothing.
    offered: usize,
    last_gain: Instant,
    /// Peers named at the last refresh.
    known: usize,
    /// Chunks a peer sent corrupt: never asked of it again.
    refused: HashSet<(String, usize, u32)>,
    /// Corrupt chunks per peer.
    corrupt: HashMap<String, u32>,
}

/// Why a chunk was not taken.
#[derive(Debug)]
enum Failure {
    /// Its bytes are not the ones named.
    Corrupt(String),
    /// No answer, or the disk.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(why) | Self::Other(why) => f.write_str(why),
        }
    }
}

impl Swarm {
    /// `peer` failed to give `(file, chunk)`: a corrupt chunk is never
    /// asked of it again (the peer is paused after [`CORRUPT_LIMIT`]); a
    /// peer that did not answer is paused for [`PEER_PAUSE`].
    fn peer_failed(&mut self, peer: &str, (file, chunk): (usize, u32), why: &Failure) {
        let pause = match why {
            Failure::Corrupt(_) => {
                self.refused.insert((peer.to_string(), file, chunk));
                let count = self.corrupt.entry(peer.to_string()).or_default();
                *count += 1;
                tracing::warn!(%peer, "weights: {why}; taken from elsewhere");
                (*count >= CORRUPT_LIMIT).then(|| {
                    tracing::warn!(%peer, "weights: {count} corrupt chunks from this peer; it is not asked for {} s", CORRUPT_PAUSE.as_secs());
                    CORRUPT_PAUSE
                })
            }
            Failure::Other(_) => {
                tracing::info!(%peer, "weights: {why}; the peer is not asked for {} s", PEER_PAUSE.as_secs());
                Some(PEER_PAUSE)
            }
        };
        if let Some(pause) = pause {
            self.paused.insert(peer.to_string(), Instant::now() + pause);
            self.offers.retain(|(p, _)| p != peer);
        }
    }
}

impl Fetcher {
    /// A fetch of `origin`'s revision with `settings`, as `role`; with a
    /// `client` and `service`, shared with `peers`.
    pub fn new(origin: Origin, settings: FetchSettings, role: Role) -> Self {
        let progress = Progress {
            origin: origin.describe(),
            repo: origin.repo().to_string(),
            ..Progress::default()
        };
        Self {
            origin,
            settings,
            role,
            peers: Peers::Fixed(Vec::new()),
            introduced: Mutex::new(Vec::new()),
            client: None,
            service: None,
            progress: Arc::new(Mutex::new(progress)),
        }
    }

    /// Shares chunks with `peers` through `client`, and offers this
    /// node's through `service`.
    pub fn with_peers(
        mut self,
        peers: Peers,
        client: PeerClient,
        service: Arc<PeerService>,
    ) -> Self {
        self.peers = peers;
        self.client = Some(client);
        self.service = Some(service);
        self
    }

    /// The progress, shared (read it while [`Fetcher::run`] goes).
    pub fn progress(&self) -> Arc<Mutex<Progress>> {
        Arc::clone(&self.progress)
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        let mut progress = match self.progress.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut progress);
    }

    /// The revision's id in the group (the same on every node of one
    /// configuration).
    pub fn id(&self) -> String {
        self.origin.id()
    }

    fn id_file(&self) -> PathBuf {
        self.settings
            .cache
            .join(".orchestrator-ids")
            .join(self.origin.id())
    }

    /// The complete revision this configuration fetched last, if any.
    fn cached(&self) -> Option<Manifest> {
        let text = std::fs::read_to_string(self.id_file()).ok()?;
        let (repo, revision) = text.trim_end().split_once('\n')?;
        Store::cached(&self.settings.cache, repo, revision)
    }

    /// Fetches the revision; returns the folder holding it.
    pub async fn run(&self) -> Result<PathBuf, FetchError> {
        let started = Instant::now();
        let result = self.fetch().await;
        self.update(|p| {
            p.seconds = started.elapsed().as_secs_f64();
            match &result {
                Ok(path) => {
                    p.state = FetchState::Done;
                    p.path = Some(path.clone());
                    p.done_bytes = p.total_bytes;
                }
                Err(e) => {
                    p.state = FetchState::Failed;
                    p.error = Some(e.to_string());
                }
            }
        });
        result
    }

    async fn fetch(&self) -> Result<PathBuf, FetchError> {
        let id = self.origin.id();
        let manifest = self.manifest(&id).await?;
        let cache = self.settings.cache.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&cache, manifest))
            .await
            .map_err(|e| FetchError::Task(e.to_string()))??;
        let store = Arc::new(store);
        let path = store.path().to_path_buf();
        remember(&self.id_file(), store.manifest());
        if let Some(service) = &self.service {
            service.register(&id, Arc::clone(&store));
        }
        let manifest = store.manifest().clone();
        self.update(|p| {
            p.revision = manifest.revision.clone();
            p.total_bytes = manifest.total_bytes();
            p.done_bytes = store.done_bytes();
            p.path = Some(path.clone());
            p.cached = store.is_complete();
        });
        if store.is_complete() {
            tracing::info!(repo = %manifest.repo, revision = %manifest.revision, path = %path.display(), "weights: complete in the cache");
            return Ok(path);
        }
        tracing::info!(
            repo = %manifest.repo,
            revision = %manifest.revision,
            files = manifest.files.len(),
            mib = manifest.total_bytes() >> 20,
            role = ?self.role,
            "weights: fetching"
        );
        // A file unlike the origin's digest is fetched once more.
        for attempt in 0..2 {
            self.update(|p| p.state = FetchState::Fetching);
            self.fill(&id, &store).await?;
            self.update(|p| p.state = FetchState::Verifying);
            let finishing = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || finishing.finish())
                .await
                .map_err(|e| FetchError::Task(e.to_string()))?
            {
                Ok(()) => break,
                Err(e @ StoreError::FileDigest { .. }) if attempt == 0 => {
                    tracing::warn!("weights: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        tracing::info!(
            path = %path.display(),
            origin_mib = progress.from_origin_bytes >> 20,
            peers_mib = progress.from_peers_bytes.values().sum::<u64>() >> 20,
            "weights: complete"
        );
        Ok(path)
    }

    /// The revision's manifest: from the origin (the seed), from a peer,
    /// or from the cache when neither answers.
    async fn manifest(&self, id: &str) -> Result<Manifest, FetchError> {
        if self.role == Role::Join
            && let Some(offer) = self.first_offer(id).await
        {
            return Ok(offer.manifest);
        }
        match self.origin.list(self.settings.chunk_bytes).await {
            Ok(manifest) => Ok(manifest),
            Err(e) => match self.cached() {
                Some(manifest) => {
                    tracing::warn!(
                        "weights: {e}; using the complete revision {} in the cache",
                        manifest.revision
                    );
                    Ok(manifest)
                }
                None => Err(e.into()),
            },
        }
    }

    /// The nodes to ask now: the fixed ones, or the seed and the nodes it
    /// introduces (the last ones heard of when it does not answer).
    async fn peer_list(&self, id: &str) -> Vec<String> {
        match (&self.peers, &self.client) {
            (Peers::Fixed(peers), _) => peers.clone(),
            (Peers::Via { seed, me }, Some(client)) => {
                let mut introduced = match client.introduce(seed, id, me).await {
                    Ok(others) => {
                        if let Ok(mut kept) = self.introduced.lock() {
                            kept.clone_from(&others);
                        }
                        others
                    }
                    Err(e) => {
                        tracing::debug!("weights: {e}");
                        self.introduced
                            .lock()
                            .map(|k| k.clone())
                            .unwrap_or_default()
                    }
                };
                introduced.retain(|p| p != me && p != seed);
                introduced.insert(0, seed.clone());
                introduced
            }
            (Peers::Via { .. }, None) => Vec::new(),
        }
    }

    /// The first offer a peer gives within `peer-wait`.
    async fn first_offer(&self, id: &str) -> Option<Offer> {
        let client = self.client.as_ref()?;
        let until = Instant::now() + self.settings.peer_wait;
        loop {
            for peer in self.peer_list(id).await {
                match client.offer(&peer, id).await {
                    Ok(offer) => {
                        tracing::info!(%peer, "weights: manifest from a peer");
                        return Some(offer);
                    }
                    Err(e) => tracing::debug!("weights: {e}"),
                }
            }
            if Instant::now() >= until {
                tracing::warn!(
                    "weights: no peer offered the revision within {} s; listing the origin",
                    self.settings.peer_wait.as_secs()
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Refreshes the peers' offers (at most every [`OFFER_REFRESH`]).
    async fn refresh(&self, id: &str, swarm: &mut Swarm, manifest: &Manifest) {
        let Some(client) = &self.client else {
            return;
        };
        if swarm
            .refreshed
            .is_some_and(|at| at.elapsed() < OFFER_REFRESH)
        {
            return;
        }
        swarm.refreshed = Some(Instant::now());
        let now = Instant::now();
        let named = self.peer_list(id).await;
        swarm.known = named.len();
        let peers: Vec<String> = named
            .into_iter()
            .filter(|p| swarm.paused.get(p).is_none_or(|until| *until <= now))
            .collect();
        let asks = peers.iter().map(|peer| {
            let client = client.clone();
            let peer = peer.clone();
            let id = id.to_string();
            async move { (peer.clone(), client.offer(&peer, &id).await) }
        });
        let mut offers = Vec::new();
        for (peer, answer) in futures_join(asks).await {
            match answer {
                Ok(offer) if offer.manifest == *manifest => offers.push((peer, offer)),
                Ok(_) => tracing::debug!(%peer, "weights: the peer offers another cut"),
                Err(e) => {
                    tracing::debug!("weights: {e}");
                    swarm.paused.insert(peer, now + PEER_PAUSE);
                }
            }
        }
        let offered = offers.iter().map(|(_, o)| o.count()).sum();
        if offered > swarm.offered {
            swarm.last_gain = now;
        }
        swarm.offered = offered;
        swarm.offers = offers;
    }

    /// Where to take `(file, chunk)` from now, and the digest to check.
    fn source_of(
        &self,
        swarm: &Swarm,
        (file, chunk): (usize, u32),
    ) -> Option<(Source, Option<String>)> {
        let now = Instant::now();
        let holders: Vec<&(String, Offer)> = swarm
            .offers
            .iter()
            .filter(|(peer, offer)| {
                offer.digest(file, chunk).is_some()
                    && swarm.paused.get(peer).is_none_or(|until| *until <= now)
                    && !swarm.refused.contains(&(peer.clone(), file, chunk))
            })
            .collect();
        // The seed's uplink is kept for what only it has.
        let seed = match &self.peers {
            Peers::Via { seed, .. } => Some(seed),
            Peers::Fixed(_) => None,
        };
        if let Some((peer, offer)) = holders.iter().min_by_key(|(peer, _)| {
            (
                Some(peer) == seed,
                swarm.asked.get(peer).copied().unwrap_or(0),
            )
        }) {
            let digest = offer.digest(file, chunk).map(str::to_string);
            return Some((Source::Peer(peer.clone()), digest));
        }
        let patience = match self.role {
            Role::Join if swarm.known > 0 => self.settings.stall,
            _ => Duration::ZERO,
        };
        (swarm.last_gain.elapsed() >= patience).then(|| {
            let digest = swarm
                .offers
                .iter()
                .find_map(|(_, o)| o.digest(file, chunk).map(str::to_string));
            (Source::Origin, digest)
        })
    }

    /// Takes every missing chunk.
    async fn fill(&self, id: &str, store: &Arc<Store>) -> Result<(), FetchError> {
        let manifest = store.manifest().clone();
        let started = Instant::now();
        let mut swarm = Swarm {
            offers: Vec::new(),
            refreshed: None,
            paused: HashMap::new(),
            asked: HashMap::new(),
            offered: 0,
            last_gain: Instant::now(),
            known: 0,
            refused: HashSet::new(),
            corrupt: HashMap::new(),
        };
        let mut flying: JoinSet<Taken> = JoinSet::new();
        let mut pending: HashSet<(usize, u32)> = HashSet::new();
        let mut origin_failures = 0u32;
        loop {
            self.refresh(id, &mut swarm, &manifest).await;
            let mut missing: Vec<(usize, u32)> = store
                .missing()
                .into_iter()
                .filter(|c| !pending.contains(c))
                .collect();
            if missing.is_empty() && flying.is_empty() {
                return Ok(());
            }
            if self.role == Role::Join {
                use rand::seq::SliceRandom;
                missing.shuffle(&mut rand::rng());
            }
            for chunk in missing {
                if flying.len() >= self.settings.parallel.max(1) {
                    break;
                }
                let Some((source, digest)) = self.source_of(&swarm, chunk) else {
                    continue;
                };
                if let Source::Peer(peer) = &source {
                    *swarm.asked.entry(peer.clone()).or_default() += 1;
                }
                pending.insert(chunk);
                flying.spawn(self.take(id, store, chunk, source, digest));
            }
            if flying.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let next = tokio::time::timeout(Duration::from_millis(200), flying.join_next()).await;
            let Ok(Some(done)) = next else {
                continue;
            };
            let (file, chunk, source, result) =
                done.map_err(|e| FetchError::Task(e.to_string()))?;
            pending.remove(&(file, chunk));
            if let Source::Peer(peer) = &source
                && let Some(n) = swarm.asked.get_mut(peer)
            {
                *n = n.saturating_sub(1);
            }
            match result {
                Ok(()) => {
                    swarm.last_gain = Instant::now();
                    if source == Source::Origin {
                        origin_failures = 0;
                    }
                    self.took(store, &source, (file, chunk), started);
                }
                Err(why) => match source {
                    Source::Origin => {
                        origin_failures += 1;
                        tracing::warn!("weights: {why}");
                        if origin_failures >= ORIGIN_ATTEMPTS {
                            return Err(FetchError::Task(format!(
                                "the origin failed {ORIGIN_ATTEMPTS} times in a row, last: {why}"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(250 << origin_failures.min(5)))
                            .await;
                    }
                    Source::Peer(peer) => {
                        if matches!(why, Failure::Corrupt(_)) {
                            self.update(|p| p.corrupt_chunks += 1);
                        }
                        swarm.peer_failed(&peer, (file, chunk), &why);
                    }
                },
            }
        }
    }

    /// Counts a chunk taken from `source`.
    fn took(&self, store: &Store, source: &Source, (file, chunk): (usize, u32), started: Instant) {
        let len = store
            .manifest()
            .chunk_span(file, chunk)
            .map_or(0, |(_, l)| l);
        self.update(|p| {
            p.done_bytes = store.done_bytes();
            match source {
                Source::Origin => p.from_origin_bytes += len,
                Source::Peer(peer) => *p.from_peers_bytes.entry(peer.clone()).or_default() += len,
            }
            let taken = p.from_origin_bytes + p.from_peers_bytes.values().sum::<u64>();
            p.bytes_per_second = taken as f64 / started.elapsed().as_secs_f64().max(1e-3);
        });
    }

    /// Takes one chunk from `source` and stores it.
    fn take(
        &self,
        id: &str,
        store: &Arc<Store>,
        (file, chunk): (usize, u32),
        source: Source,
        digest: Option<String>,
    ) -> impl std::future::Future<Output = Taken> + Send + 'static {
        let store = Arc::clone(store);
        let origin = self.origin.clone();
        let client = self.client.clone();
        let id = id.to_string();
        async move {
            let manifest = store.manifest();
            let Some((start, len)) = manifest.chunk_span(file, chunk) else {
                return (
                    file,
                    chunk,
                    source,
                    Err(Failure::Other("no such chunk".into())),
                );
            };
            let entry = &manifest.files[file];
            let bytes = match (&source, &client) {
                (Source::Origin, _) => origin
                    .range(&manifest.revision, &entry.path, (start, len, entry.size))
                    .await
                    .map_err(|e| e.to_string()),
                (Source::Peer(peer), Some(client)) => client
                    .chunk(peer, &id, file, chunk, len)
                    .await
                    .map_err(|e| e.to_string()),
                (Source::Peer(_), None) => Err("no peer client".to_string()),
            };
            let result = match bytes {
                Ok(bytes) => {
                    let putting = Arc::clone(&store);
                    match tokio::task::spawn_blocking(move || {
                        putting.put(file, chunk, &bytes, digest.as_deref())
                    })
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e @ StoreError::Corrupt { .. })) => {
                            Err(Failure::Corrupt(e.to_string()))
                        }
                        Ok(Err(e)) => Err(Failure::Other(e.to_string())),
                        Err(e) => Err(Failure::Other(e.to_string())),
                    }
                }
                Err(e) => Err(Failure::Other(e)),
            };
            (file, chunk, source, result)
        }
    }
}

/// Runs `futures` side by side; their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// Records which revision this configuration fetched (for when the origin
/// is gone).
fn remember(path: &Path, manifest: &Manifest) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, format!("{}\n{}\n", manifest.repo, manifest.revision));
}
