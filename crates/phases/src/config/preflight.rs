//! `[serve.preflight]`: the gang preflight before the server starts (a
//! timed collective over every node of the group, and what GPUs each
//! sees).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[serve.preflight]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PreflightConfig {
    /// `off`, `warn` (a failed preflight is logged, shown and sent as an
    /// Event; the server starts anyway) or `required` (the orchestrator
    /// exits 1 naming the nodes instead of starting the server).
    pub mode: PreflightMode,
    /// The collective's library: `auto` (NCCL where the node has GPUs,
    /// else Gloo), `gloo` or `nccl`.
    pub backend: CollectiveBackend,
    /// The all-reduce's size, KiB.
    pub kib: u64,
    /// How long every rank may take to join and finish, seconds.
    pub timeout_seconds: u64,
    /// A rank whose ping-pong with rank 0 takes longer is named slow, ms.
    pub max_p2p_ms: u64,
    /// The group's all-reduce taking longer fails the preflight, ms.
    pub max_allreduce_ms: u64,
    /// Whether each node must see as many GPUs as it offers.
    pub check_gpus: bool,
    /// The Python with torch that runs the check (default: the one beside
    /// the server's program, else `python3` on the PATH).
    pub python: Option<PathBuf>,
}

impl Default for PreflightConfig {
    fn default() -> Self {
        Self {
            mode: PreflightMode::Off,
            backend: CollectiveBackend::Auto,
            kib: 4096,
            timeout_seconds: 60,
            max_p2p_ms: 2000,
            max_allreduce_ms: 10_000,
            check_gpus: true,
            python: None,
        }
    }
}

/// What a failed preflight does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreflightMode {
    /// No preflight.
    #[default]
    Off,
    /// Shown, logged and sent as an Event; the server starts anyway.
    Warn,
    /// The orchestrator exits 1 naming the nodes; no server starts.
    Required,
}

/// The collective's library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollectiveBackend {
    /// NCCL where the node has GPUs, else Gloo.
    #[default]
    Auto,
    /// Gloo (CPU, TCP).
    Gloo,
    /// NCCL (GPUs).
    Nccl,
}

impl CollectiveBackend {
    /// The name the check takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        }
    }
}
