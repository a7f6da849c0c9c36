//! `[serve.compile-cache]`: vLLM's compile and kernel caches kept on the
//! node under a folder keyed by what changes them, reused on a restart,
//! and taken from a peer that has them. Entry point: [`CompileCacheConfig`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[serve.compile-cache]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CompileCacheConfig {
    /// Keep the caches (off: vLLM's own default, `~/.cache/vllm`).
    pub enabled: bool,
    /// This node's cache; vLLM's is `<dir>/<key>/vllm` (`VLLM_CACHE_ROOT`),
    /// Triton's `<dir>/<key>/triton`, with the key's inputs in
    /// `<dir>/<key>/inputs.json`. The same path on every node.
    pub dir: PathBuf,
    /// Take a missing cache from a peer, and offer this node's (needs the
    /// group's secret, as `[serve.weights]` does).
    pub share: bool,
    /// How long the launch waits for this node's cache to be ready (a
    /// pull from a peer), s; past it vLLM compiles.
    pub wait_seconds: u64,
    /// The longest one request to a peer may take, s.
    pub timeout_seconds: u64,
}

impl Default for CompileCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("/var/cache/orchestrator/compile"),
            share: true,
            wait_seconds: 60,
            timeout_seconds: 60,
        }
    }
}
