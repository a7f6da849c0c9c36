//! `[serve.compile-cache]` on this node: vLLM's compile and kernel caches
//! (`VLLM_CACHE_ROOT`, which holds torch.compile's and Inductor's, and
//! `TRITON_CACHE_DIR`) live under `<dir>/<key>/cache`, where the key is a
//! digest of what changes them: the model and its revision, the vLLM
//! version, the parallel sizes and the `[serve] extra-args` that change
//! compilation (written beside it as `inputs.json`). A restart with the
//! same inputs reuses it (a hit); a miss says which input differs from the
//! nearest cache kept; a node without it takes it from a peer that has it
//! (the head or leader first) over the weights' signed channel. Once the
//! group serves, each node offers its cache and the head or leader
//! gathers every rank's, so a node that comes back empty finds all of
//! them there. Entry point: [`CompileCachePlan::new`], run by the
//! lifecycle ([`spawn`]); the launch adds [`launch_env`].

use crate::config::{CompileCacheConfig, Config};
use crate::endpoints::Status;
use orchestrator_domain::KeyValue;
pub use orchestrator_domain::compile_cache::{CacheState, CacheView};
use orchestrator_weights::folder;
use orchestrator_weights::{PeerClient, PeerKey, PeerService};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The mark of a cache that served: a restart reuses it as it is.
const READY_MARK: &str = ".orchestrator-ready";
/// Where sealed and pulled caches are kept, under `dir`.
const STORE: &str = ".orchestrator-store";
/// The chunk size of the caches offered to peers.
const SEAL_CHUNK_BYTES: u64 = 4 << 20;
/// The empty folder the seed offers to say it has no cache, under
/// `<dir>/<key>` ([`none_id`]).
const NONE_FOLDER: &str = ".orchestrator-none";
/// How often a node asks whether the group serves yet.
const SERVES_POLL: Duration = Duration::from_secs(1);
/// How often the group is asked for caches once it serves.
const GATHER_EVERY: Duration = Duration::from_secs(5);
/// How long caches are gathered after the group serves.
const GATHER_FOR: Duration = Duration::from_secs(600);
/// How long a node without a cache asks its peers before vLLM compiles
/// (the seed waits for the others to introduce themselves; the others
/// for the seed to offer what it kept). A miss can end sooner: the seed's
/// once every rank of a native group has introduced itself and none has
/// a cache, the others' once the seed says it has none ([`none_id`]).
const ASK_FOR: Duration = Duration::from_secs(10);
/// The `[serve] extra-args` that change what vLLM compiles.
const COMPILE_FLAGS: &[&str] = &[
    "--dtype",
    "--max-model-len",
    "--enforce-eager",
    "--compilation-config",
    "-cc",
    "-O",
    "--quantization",
    "-q",
    "--kv-cache-dtype",
    "--max-num-batched-tokens",
    "--max-num-seqs",
    "--block-size",
    "--enable-lora",
    "--max-lora-rank",
    "--max-loras",
    "--speculative-config",
    "--hf-overrides",
    "--attention-backend",
    "--cuda-graph-sizes",
];

/// What the key is made of, as read from the configuration.
#[derive(Debug, Clone)]
struct Basis {
    model: String,
    fetched: bool,
    tensor_parallel: u32,
    pipeline_parallel: u32,
    args: Vec<String>,
    program: String,
}

/// This node's part in keeping `[serve.compile-cache]`.
#[derive(Clone)]
pub struct CompileCachePlan {
    config: CompileCacheConfig,
    seed: bool,
    seed_address: String,
    me: String,
    secret: Option<Vec<u8>>,
    basis: Basis,
    /// The other nodes the seed can hear from: a native group's other
    /// ranks (`None` on Ray, where the nodes that come are not known in
    /// advance: the seed asks for [`ASK_FOR`]).
    other_ranks: Option<usize>,
}

impl std::fmt::Debug for CompileCachePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCachePlan")
            .field("dir", &self.config.dir)
            .field("seed", &self.seed)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl CompileCachePlan {
    /// The plan of a node of a group (arguments as for
    /// [`crate::weights::WeightsPlan::new`]); `None` when the section is
    /// off.
    pub fn new(
        config: &Config,
        seed: bool,
        seed_address: String,
        me: String,
        secret: Option<Vec<u8>>,
    ) -> Option<Self> {
        let section = &config.serve.compile_cache;
        if !section.enabled {
            return None;
        }
        let serve = &config.serve;
        let basis = Basis {
            model: serve.model.clone().unwrap_or_else(|| serve.weights.repo()),
            fetched: serve.weights.enabled(),
            tensor_parallel: serve.tensor_parallel_size.unwrap_or(1),
            pipeline_parallel: serve.pipeline_parallel_size.unwrap_or(1),
            args: compile_args(&serve.extra_args),
            program: config
                .policies
                .launch
                .params
                .get("program")
                .cloned()
                .unwrap_or_else(|| "vllm".into()),
        };
        let other_ranks = match config.backend {
            crate::config::Backend::Native => config
                .native
                .group_size
                .map(|size| size.saturating_sub(1) as usize),
            crate::config::Backend::Ray => None,
        };
        Some(Self {
            config: section.clone(),
            seed,
            seed_address,
            me,
            secret: secret.filter(|_| section.share),
            basis,
            other_ranks,
        })
    }

    fn id(key: &str) -> String {
        format!("compile-{key}")
    }
}

/// The id under which the seed says it has no cache and none of its peers
/// had one (an empty offer): the others compile at once instead of asking
/// until [`ASK_FOR`] ends. Withdrawn once the seed offers a cache.
fn none_id(key: &str) -> String {
    format!("compile-{key}-none")
}

/// The arguments of `args` that change compilation, in order (a flag with
/// its value).
fn compile_args(args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut take_value = false;
    for arg in args {
        if take_value && !arg.starts_with('-') {
            kept.push(arg.clone());
            take_value = false;
            continue;
        }
        take_value = false;
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        let matched = COMPILE_FLAGS.iter().any(|f| {
            flag == *f || (*f == "-O" && flag.starts_with("-O") && !flag.starts_with("--"))
        });
        if matched {
            kept.push(arg.clone());
            take_value = !(arg.contains('=') || flag.starts_with("-O") && flag.len() > 2);
        }
    }
    kept
}

/// The environment vLLM is launched with for `view`'s folder: empty
/// until the cache is prepared, or when it failed.
pub(crate) fn launch_env(view: &CacheView) -> Vec<KeyValue> {
    let Some(folder) = view
        .folder
        .as_ref()
        .filter(|_| !matches!(view.state, CacheState::Preparing | CacheState::Failed))
    else {
        return Vec::new();
    };
    vec![
        KeyValue::new("VLLM_CACHE_ROOT", folder.join("vllm").display().to_string()),
        KeyValue::new(
            "TRITON_CACHE_DIR",
            folder.join("triton").display().to_string(),
        ),
        // Ray carries VLLM_* to the workers; Triton's folder it must be told of.
        KeyValue::new("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "TRITON_CACHE_DIR"),
    ]
}

/// The key of `inputs`: the first 16 bytes of the sha256 of their JSON.
fn key_of(inputs: &BTreeMap<String, String>) -> String {
    let text = serde_json::to_vec(inputs).unwrap_or_default();
    orchestrator_weights::store::sha256_hex(&text)[..32].to_string()
}

/// Why `inputs` found no cache under `dir`: the inputs that differ from
/// the nearest cache kept there.
fn explain_miss(dir: &Path, key: &str, inputs: &BTreeMap<String, String>) -> String {
    let mut nearest: Option<(usize, String, Vec<String>)> = None;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == key || name.starts_with('.') {
            continue;
        }
        let Some(theirs) = std::fs::read(entry.path().join("inputs.json"))
            .ok()
            .and_then(|t| serde_json::from_slice::<BTreeMap<String, String>>(&t).ok())
        else {
            continue;
        };
        let differ: Vec<String> = inputs
            .iter()
            .filter(|(k, v)| theirs.get(*k) != Some(*v))
            .map(|(k, v)| {
                let was = theirs.get(k).map_or("(none)", String::as_str);
                format!("{k} is {v:?} (the cache kept has {was:?})")
            })
            .collect();
        if nearest.as_ref().is_none_or(|(n, _, _)| differ.len() < *n) {
            nearest = Some((differ.len(), name, differ));
        }
    }
    match nearest {
        None => format!("no compile cache kept in {} yet", dir.display()),
        Some((0, other, _)) => {
            format!("the cache {other} has the same inputs but never served")
        }
        Some((_, other, differ)) => {
            format!("nearest cache {other}: {}", differ.join("; "))
        }
    }
}

/// The vLLM version `program` runs: its interpreter (the script's `#!`
/// line) asked for the `vllm` package's version, else `program
/// --version`; bounded to 60 s.
async fn vllm_version(program: &str) -> Result<String, String> {
    let path = find_program(program).ok_or_else(|| format!("{program} is not on PATH"))?;
    let interpreter = std::fs::read(&path).ok().and_then(|bytes| {
        let head = bytes.get(..bytes.len().min(512))?;
        let line = head.strip_prefix(b"#!")?.split(|b| *b == b'\n').next()?;
        let text = String::from_utf8_lossy(line).trim().to_string();
        (!text.contains(' ')).then_some(text)
    });
    let mut command = match &interpreter {
        Some(python) => {
            let mut c = tokio::process::Command::new(python);
            c.args([
                "-c",
                "import importlib.metadata as m; print(m.version('vllm'))",
            ]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&path);
            c.arg("--version");
            c
        }
    };
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut child = command.spawn().map_err(failed)?;
    let asked = async {
        use tokio::io::AsyncReadExt;
        // At most 4 KiB of what it prints: a version is one short line.
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout.take(4096).read_to_end(&mut out).await?;
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out))
    };
    let (status, out) = tokio::time::timeout(Duration::from_secs(60), asked)
        .await
        .map_err(|_| format!("{} did not say its version in 60 s", path.display()))?
        .map_err(failed)?;
    let text = String::from_utf8_lossy(&out);
    let version = text.lines().last().unwrap_or_default().trim().to_string();
    if !status.success() || version.is_empty() {
        return Err(format!("{} did not say the vLLM version", path.display()));
    }
    Ok(version)
}

fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Starts `plan`'s cache, reporting to `status`; it stops when the
/// returned task is dropped.
pub(crate) fn spawn(
    plan: Option<&CompileCachePlan>,
    status: &Arc<Status>,
) -> Option<crate::supervision::Background> {
    let plan = plan?.clone();
    let status = Arc::clone(status);
    Some(crate::supervision::Background::spawn(run(plan, status)))
}

/// The group's channel, when there is a secret.
struct Channel {
    client: PeerClient,
    service: Arc<PeerService>,
}

fn channel(plan: &CompileCachePlan, status: &Status) -> Option<Channel> {
    let secret = plan.secret.as_ref()?;
    let key = Arc::new(PeerKey::from_secret(secret.trim_ascii()).ok()?);
    let service = status.peer_service(|| Arc::new(PeerService::new(Arc::clone(&key))));
    let timeout = Duration::from_secs(plan.config.timeout_seconds);
    let client = PeerClient::new(key, timeout).ok()?;
    Some(Channel { client, service })
}

/// The inputs of this node's key: waits for the weights' revision when
/// they are fetched.
async fn inputs(
    plan: &CompileCachePlan,
    status: &Status,
) -> Result<BTreeMap<String, String>, String> {
    let b = &plan.basis;
    let mut inputs = BTreeMap::new();
    let mut model = b.model.clone();
    if b.fetched {
        loop {
            let progress = status.weights_progress();
            match progress.as_ref().map(|p| p.state) {
                Some(orchestrator_weights::FetchState::Done) => {
                    let p = progress.unwrap_or_default();
                    model = format!("{}@{}", p.repo, p.revision);
                    break;
                }
                Some(orchestrator_weights::FetchState::Failed) => {
                    return Err("the weights' fetch failed".into());
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    inputs.insert("model".into(), model);
    inputs.insert("vllm-version".into(), vllm_version(&b.program).await?);
    inputs.insert("tensor-parallel-size".into(), b.tensor_parallel.to_string());
    inputs.insert(
        "pipeline-parallel-size".into(),
        b.pipeline_parallel.to_string(),
    );
    inputs.insert("args".into(), b.args.join(" "));
    Ok(inputs)
}

async fn run(plan: CompileCachePlan, status: Arc<Status>) {
    let channel = channel(&plan, &status);
    if plan.secret.is_some() && channel.is_none() {
        tracing::warn!("compile cache: the group secret is unusable; this node shares no cache");
    }
    status.compile_cache(CacheView::default());
    let inputs = match inputs(&plan, &status).await {
        Ok(inputs) => inputs,
        Err(reason) => {
            tracing::warn!("compile cache: {reason}; vLLM uses its default cache");
            return status.compile_cache(CacheView {
                state: CacheState::Failed,
                reason: Some(reason),
                ..CacheView::default()
            });
        }
    };
    let key = key_of(&inputs);
    let Some(mut view) = prepare(&plan, &inputs, &key, channel.as_ref()).await else {
        return status.compile_cache(CacheView {
            state: CacheState::Failed,
            key,
            reason: Some(format!("{} cannot be written", plan.config.dir.display())),
            ..CacheView::default()
        });
    };
    status.compile_cache(view.clone());
    if let Some(channel) = channel {
        share(&plan, &key, &channel, &status, &mut view).await;
    }
}

/// Makes `<dir>/<key>`, decides hit or miss, and on a miss asks the peers.
async fn prepare(
    plan: &CompileCachePlan,
    inputs: &BTreeMap<String, String>,
    key: &str,
    channel: Option<&Channel>,
) -> Option<CacheView> {
    let root = plan.config.dir.join(key);
    let folder = root.join("cache");
    std::fs::create_dir_all(&folder).ok()?;
    let text = serde_json::to_vec_pretty(inputs).unwrap_or_default();
    std::fs::write(root.join("inputs.json"), text).ok()?;
    let mut view = CacheView {
        key: key.to_string(),
        folder: Some(folder.clone()),
        inputs: inputs.clone(),
        ..CacheView::default()
    };
    if root.join(READY_MARK).is_file() {
        tracing::info!(key, folder = %folder.display(), "compile cache: hit");
        view.state = CacheState::Hit;
        return Some(view);
    }
    let reason = explain_miss(&plan.config.dir, key, inputs);
    let mut asked = "";
    if let Some(channel) = channel {
        match pull_any(plan, key, channel).await {
            Asked::Taken(from) => {
                tracing::info!(key, %from, "compile cache: taken from a peer ({reason} here)");
                let _ = std::fs::write(root.join(READY_MARK), b"");
                view.state = CacheState::Pulled;
                view.from = Some(from);
                return Some(view);
            }
            Asked::NoneHas => asked = "; no peer has one",
            Asked::WaitEnded => asked = "; no peer offered one in time",
        }
        if plan.seed {
            say_none(plan, key, channel).await;
        }
    }
    tracing::info!(key, "compile cache: miss, vLLM compiles: {reason}{asked}");
    view.state = CacheState::Miss;
    view.reason = Some(reason);
    Some(view)
}

/// The peers to ask: the seed first; the seed asks the nodes introduced
/// to it.
async fn peers(plan: &CompileCachePlan, key: &str, channel: &Channel) -> Vec<String> {
    let id = CompileCachePlan::id(key);
    if plan.seed {
        return channel.service.introduced(&id);
    }
    let mut peers = vec![plan.seed_address.clone()];
    if let Ok(others) = channel
        .client
        .introduce(&plan.seed_address, &id, &plan.me)
        .await
    {
        peers.extend(others.into_iter().filter(|p| *p != plan.me));
    }
    peers
}

/// What asking the peers gave.
enum Asked {
    /// A whole cache, from this peer.
    Taken(String),
    /// Certain that no peer has one (see [`none_anywhere`]).
    NoneHas,
    /// None offered one before the wait ended.
    WaitEnded,
}

/// Takes the first whole cache a peer offers into this node's folder.
async fn pull_any(plan: &CompileCachePlan, key: &str, channel: &Channel) -> Asked {
    let deadline =
        tokio::time::Instant::now() + ASK_FOR.min(Duration::from_secs(plan.config.wait_seconds));
    loop {
        let asked = peers(plan, key, channel).await;
        for peer in &asked {
            if pull_from(plan, key, channel, peer)
                .await
                .is_some_and(|n| n > 0)
            {
                return Asked::Taken(peer.clone());
            }
        }
        if none_anywhere(plan, key, channel, asked.len()).await {
            return Asked::NoneHas;
        }
        if tokio::time::Instant::now() >= deadline {
            return Asked::WaitEnded;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a miss is certain before [`ASK_FOR`] ends: on the seed, every
/// other rank of the group has introduced itself (`asked` of them) and
/// none offered a cache (a node with one offers it before it introduces
/// itself); elsewhere, the seed says so under [`none_id`].
async fn none_anywhere(
    plan: &CompileCachePlan,
    key: &str,
    channel: &Channel,
    asked: usize,
) -> bool {
    if plan.seed {
        return plan.other_ranks.is_some_and(|others| asked >= others);
    }
    channel
        .client
        .offer(&plan.seed_address, &none_id(key))
        .await
        .is_ok()
}

/// The seed's miss, told to the group: an empty offer under [`none_id`].
async fn say_none(plan: &CompileCachePlan, key: &str, channel: &Channel) {
    let store_dir = plan.config.dir.join(STORE);
    let empty = plan.config.dir.join(key).join(NONE_FOLDER);
    let id = none_id(key);
    let sealed = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&empty)
            .map_err(|e| format!("{}: {e}", empty.display()))
            .and_then(|()| {
                folder::seal(&store_dir, &id, &empty, SEAL_CHUNK_BYTES).map_err(|e| e.to_string())
            })
    })
    .await;
    match sealed {
        Ok(Ok(store)) => channel.service.register(&none_id(key), Arc::new(store)),
        Ok(Err(e)) => tracing::info!("compile cache: the group is not told of the miss: {e}"),
        Err(_) => {}
    }
}

/// Takes `peer`'s cache and merges what this node lacks into its folder:
/// the files added (`None`: the peer offers none).
async fn pull_from(
    plan: &CompileCachePlan,
    key: &str,
    channel: &Channel,
    peer: &str,
) -> Option<usize> {
    let id = CompileCachePlan::id(key);
    let store_dir = plan.config.dir.join(STORE);
    let store = match folder::pull(&channel.client, peer, &id, &store_dir).await {
        Ok(Some(store)) => store,
        Ok(None) => return None,
        Err(e) => {
            tracing::info!(%peer, "compile cache: not taken from this peer: {e}");
            return None;
        }
    };
    let from = store.path().to_path_buf();
    let into = plan.config.dir.join(key).join("cache");
    tokio::task::spawn_blocking(move || folder::merge(&from, &into))
        .await
        .ok()?
        .map_err(|e| tracing::warn!("compile cache: {e}"))
        .ok()
}

/// Whether the group serves: the seed's own readiness; elsewhere the
/// seed's offer (it offers once it serves).
async fn group_serves(
    plan: &CompileCachePlan,
    key: &str,
    channel: &Channel,
    status: &Status,
) -> bool {
    if plan.seed {
        return status.is_ready();
    }
    let id = CompileCachePlan::id(key);
    let _ = channel
        .client
        .introduce(&plan.seed_address, &id, &plan.me)
        .await;
    channel
        .client
        .offer(&plan.seed_address, &serving_id(key))
        .await
        .is_ok()
}

/// The id under which the seed offers its cache once the group serves
/// (the others' sign to offer theirs).
fn serving_id(key: &str) -> String {
    format!("compile-{key}-serving")
}

/// Seals this node's cache and offers it under the key's id (the seed,
/// once the group is `serving`, under [`serving_id`] too).
async fn offer(
    plan: &CompileCachePlan,
    key: &str,
    channel: &Channel,
    serving: bool,
) -> Option<String> {
    let store_dir = plan.config.dir.join(STORE);
    let root = plan.config.dir.join(key);
    let repo = CompileCachePlan::id(key);
    let folder = root.join("cache");
    let store = tokio::task::spawn_blocking(move || {
        folder::seal(&store_dir, &repo, &folder, SEAL_CHUNK_BYTES)
    })
    .await
    .ok()?
    .map_err(|e| tracing::warn!("compile cache: not offered: {e}"))
    .ok()?;
    let _ = std::fs::write(root.join(READY_MARK), b"");
    let revision = store.manifest().revision.clone();
    let store = Arc::new(store);
    channel.service.withdraw(&none_id(key));
    if plan.seed && serving {
        channel
            .service
            .register(&serving_id(key), Arc::clone(&store));
    }
    channel.service.register(&CompileCachePlan::id(key), store);
    Some(revision)
}

/// Once the group serves: offers this node's cache, then for a while
/// takes what its peers hold that it lacks (the seed: every rank's),
/// offering the whole again after each gain.
async fn share(
    plan: &CompileCachePlan,
    key: &str,
    channel: &Channel,
    status: &Status,
    view: &mut CacheView,
) {
    if matches!(view.state, CacheState::Hit | CacheState::Pulled) {
        // A cache that served before: offered at once, for a node that
        // comes back empty while the group starts.
        view.offered = offer(plan, key, channel, false).await;
        status.compile_cache(view.clone());
    }
    while !group_serves(plan, key, channel, status).await {
        tokio::time::sleep(SERVES_POLL).await;
    }
    // What vLLM compiled served: a restart may use it, sealed or not.
    let _ = std::fs::write(plan.config.dir.join(key).join(READY_MARK), b"");
    view.offered = offer(plan, key, channel, true).await;
    tracing::info!(key, revision = ?view.offered, "compile cache: offered to the group");
    status.compile_cache(view.clone());
    let until = tokio::time::Instant::now() + GATHER_FOR;
    while tokio::time::Instant::now() < until {
        let mut gained = 0;
        for peer in peers(plan, key, channel).await {
            if let Some(n) = pull_from(plan, key, channel, &peer)
                .await
                .filter(|n| *n > 0)
            {
                *view.gathered.entry(peer).or_default() += n;
                gained += n;
            }
        }
        if gained > 0 {
            view.offered = offer(plan, key, channel, true).await;
            tracing::info!(
                key,
                files = gained,
                "compile cache: took the peers' files; offered again"
            );
            status.compile_cache(view.clone());
        }
        tokio::time::sleep(GATHER_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn only_the_arguments_that_change_compilation_are_in_the_key() {
        let args = strings(&[
            "--max-model-len",
            "256",
            "--served-model-name",
            "tiny",
            "--dtype=bfloat16",
            "-O3",
            "--enforce-eager",
            "--port",
            "8000",
        ]);
        assert_eq!(
            compile_args(&args),
            strings(&[
                "--max-model-len",
                "256",
                "--dtype=bfloat16",
                "-O3",
                "--enforce-eager"
            ])
        );
    }

    #[test]
    fn a_miss_names_the_input_that_differs_from_the_nearest_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = BTreeMap::new();
        inputs.insert("model".to_string(), "m@1".to_string());
        inputs.insert("vllm-version".to_string(), "0.31.0".to_string());
        inputs.insert("args".to_string(), String::new());
        assert!(explain_miss(dir.path(), "k", &inputs).starts_with("no compile cache kept"));
        let old = key_of(&inputs);
        std::fs::create_dir_all(dir.path().join(&old)).unwrap();
        std::fs::write(
            dir.path().join(&old).join("inputs.json"),
            serde_json::to_vec(&inputs).unwrap(),
        )
        .unwrap();
        let mut far = inputs.clone();
        far.insert("model".into(), "other@2".into());
        far.insert("args".into(), "--dtype half".into());
        std::fs::create_dir_all(dir.path().join("far")).unwrap();
        std::fs::write(
            dir.path().join("far/inputs.json"),
            serde_json::to_vec(&far).unwrap(),
        )
        .unwrap();
        inputs.insert("vllm-version".into(), "0.32.0".into());
        let new = key_of(&inputs);
        assert_ne!(new, old);
        let why = explain_miss(dir.path(), &new, &inputs);
        assert!(why.contains(&old), "{why}");
        assert!(
            why.contains("vllm-version is \"0.32.0\" (the cache kept has \"0.31.0\")"),
            "{why}"
        );
        assert!(!why.contains("model"), "{why}");
    }

    #[test]
    fn vllm_is_launched_on_the_folder_once_it_is_prepared() {
        let mut view = CacheView {
            folder: Some(PathBuf::from("/c/k/cache")),
            ..CacheView::default()
        };
        assert!(launch_env(&view).is_empty());
        view.state = CacheState::Miss;
        let env = launch_env(&view);
        assert_eq!(env[0].key, "VLLM_CACHE_ROOT");
        assert_eq!(env[0].value, "/c/k/cache/vllm");
        assert_eq!(env[1].value, "/c/k/cache/triton");
    }
}
