//! `[serve.weights]`: the model's files fetched from an origin once per
//! group (the head or leader from the origin, every other node from the
//! nodes that have them), kept in a cache by repo and revision, and served
//! from there. Entry point: [`WeightsConfig`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The kind of origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginKind {
    /// A mirror of the Hugging Face hub's API (`HF_ENDPOINT`-style).
    Hub,
    /// A plain HTTP(S) directory.
    Directory,
}

/// `[serve.weights]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WeightsConfig {
    /// `hub` or `directory`; none: off.
    pub origin: Option<OriginKind>,
    /// The hub mirror's base URL (what `HF_ENDPOINT` would be), or the
    /// directory's URL.
    pub url: String,
    /// Hub: the repository, `org/name`; directory: the model's name in
    /// the cache (default: the URL's last part).
    pub repo: Option<String>,
    /// Hub: a branch, tag or commit (default `main`); directory: this
    /// revision's name (default: a digest of the listing).
    pub revision: Option<String>,
    /// Directory: its files (default: nginx's JSON autoindex).
    pub files: Vec<String>,
    /// The environment variable holding a bearer token for the origin
    /// (hub default `HF_TOKEN`; directory default none).
    pub token_env: Option<String>,
    /// This node's cache; the folder vLLM is given is
    /// `<cache-dir>/<org>--<name>/<revision>`, the same on every node.
    pub cache_dir: PathBuf,
    /// Chunk size, MiB.
    pub chunk_mib: u64,
    /// Chunks in flight on each node.
    pub parallel: u64,
    /// How long a node other than the head or leader waits for a peer's
    /// offer before it lists the origin itself, s.
    pub peer_wait_seconds: u64,
    /// How long such a node waits for its peers to gain a chunk before it
    /// takes the chunk from the origin, s (the head or leader died).
    pub stall_seconds: u64,
    /// The longest one request to the origin or a peer may take, s.
    pub timeout_seconds: u64,
    /// How long the launch waits for every serving node's copy, s.
    pub wait_seconds: u64,
    /// Share chunks between nodes (needs the group's secret: the native
    /// group's, or Ray's auth token); off: every node fetches from the
    /// origin.
    pub share: bool,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        Self {
            origin: None,
            url: String::new(),
            repo: None,
            revision: None,
            files: Vec::new(),
            token_env: None,
            cache_dir: PathBuf::from("/var/cache/orchestrator/weights"),
            chunk_mib: 16,
            parallel: 4,
            peer_wait_seconds: 120,
            stall_seconds: 30,
            timeout_seconds: 120,
            wait_seconds: 7200,
            share: true,
        }
    }
}

/// What is wrong with `[serve.weights]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsProblem {
    /// No URL.
    #[error("serve.weights.url is empty: give the hub mirror's base URL or the directory's URL")]
    NoUrl,
    /// A URL that is not HTTP(S).
    #[error("serve.weights.url {0:?} is not an http:// or https:// URL")]
    NotHttp(String),
    /// A hub origin without a repository.
    #[error(
        "serve.weights.repo is missing: a hub origin needs the repository, e.g. repo = \"org/name\""
    )]
    NoRepo,
    /// A name the cache cannot hold.
    #[error("serve.weights.{0} {1:?} is not a safe relative name (no `..`, no leading `/`)")]
    Unsafe(&'static str, String),
    /// Both the weights and a copy.
    #[error("serve.weights and serve.prefetch.copy-to both give vLLM a local copy: keep one")]
    WithCopy,
}

impl WeightsConfig {
    /// Whether the weights are fetched.
    pub fn enabled(&self) -> bool {
        self.origin.is_some()
    }

    /// The model's name in the cache.
    pub fn repo(&self) -> String {
        match (&self.repo, self.origin) {
            (Some(repo), _) => repo.clone(),
            (None, _) => self
                .url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("model")
                .to_string(),
        }
    }

    /// Checks what parses but cannot work.
    pub fn check(&self) -> Result<(), WeightsProblem> {
        let Some(kind) = self.origin else {
            return Ok(());
        };
        if self.url.trim().is_empty() {
            return Err(WeightsProblem::NoUrl);
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(WeightsProblem::NotHttp(self.url.clone()));
        }
        if kind == OriginKind::Hub && self.repo.is_none() {
            return Err(WeightsProblem::NoRepo);
        }
        let repo = self.repo();
        if !orchestrator_weights::manifest::safe_path(&repo) {
            return Err(WeightsProblem::Unsafe("repo", repo));
        }
        if let Some(revision) = &self.revision
            && !orchestrator_weights::manifest::safe_path(revision)
        {
            return Err(WeightsProblem::Unsafe("revision", revision.clone()));
        }
        for file in &self.files {
            if !orchestrator_weights::manifest::safe_path(file) {
                return Err(WeightsProblem::Unsafe("files", file.clone()));
            }
        }
        Ok(())
    }

    /// The origin it names (`None` when off).
    pub fn origin_spec(&self) -> Option<orchestrator_weights::OriginSpec> {
        Some(match self.origin? {
            OriginKind::Hub => orchestrator_weights::OriginSpec::Hub {
                endpoint: self.url.clone(),
                repo: self.repo(),
                revision: self.revision.clone().unwrap_or_else(|| "main".into()),
                token_env: Some(self.token_env.clone().unwrap_or_else(|| "HF_TOKEN".into())),
            },
            OriginKind::Directory => orchestrator_weights::OriginSpec::Directory {
                url: self.url.clone(),
                name: self.repo(),
                revision: self.revision.clone(),
                files: self.files.clone(),
                token_env: self.token_env.clone(),
            },
        })
    }

    /// The fetch's settings.
    pub fn settings(&self) -> orchestrator_weights::FetchSettings {
        orchestrator_weights::FetchSettings {
            cache: self.cache_dir.clone(),
            chunk_bytes: self.chunk_mib << 20,
            parallel: self.parallel as usize,
            peer_wait: Duration::from_secs(self.peer_wait_seconds),
            stall: Duration::from_secs(self.stall_seconds),
        }
    }
}
