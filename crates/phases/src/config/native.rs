//! `[native]` and `backend`: which backend forms the cluster, and the
//! native backend's group.

use serde::{Deserialize, Serialize};

/// Which backend forms the cluster and runs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Ray: a Ray head and workers; vLLM's Ray executor.
    #[default]
    Ray,
    /// vLLM's own multi-node mode: a rank of `vllm serve` on every node.
    Native,
}

/// `[native]`: the group of the native backend. Every field may also come
/// from the environment a LeaderWorkerSet sets (`LWS_WORKER_INDEX`,
/// `LWS_GROUP_SIZE`, `LWS_LEADER_ADDRESS`) or a StatefulSet's host name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NativeConfig {
    /// This node's rank (0 is the leader); else `LWS_WORKER_INDEX`, else
    /// the ordinal at the end of a StatefulSet pod's host name.
    pub rank: Option<u32>,
    /// Ranks in the group, the leader included; else `LWS_GROUP_SIZE`.
    pub(crate) group_size: Option<u32>,
    /// The leader's address (its endpoints are on `endpoints-port` there,
    /// torch.distributed meets on `master-port`); else
    /// `LWS_LEADER_ADDRESS`. The leader needs it only as the master
    /// address (default: `node-address`).
    pub leader_address: Option<String>,
    /// The address the other ranks reach this node at; else `POD_IP`,
    /// else 127.0.0.1.
    pub(crate) node_address: Option<String>,
    /// Where torch.distributed meets on the leader.
    pub master_port: u16,
    /// GPUs (or accelerator slots) this node offers; else as many as
    /// NVML sees.
    pub gpus: Option<f64>,
    /// How often a rank sends its heartbeat, ms.
    pub heartbeat_ms: u64,
    /// After how long without a heartbeat the leader counts a rank lost
    /// (and a rank its leader), ms.
    pub heartbeat_timeout_ms: u64,
    /// How long a rank waits for its leader to answer at start, seconds.
    pub(crate) leader_wait_seconds: u64,
    /// A file holding the group secret (a mounted Kubernetes Secret);
    /// `$ORCHESTRATOR_GROUP_SECRET` wins when set. Every rank's requests
    /// and the leader's answers are signed with it.
    pub(crate) secret_file: Option<std::path::PathBuf>,
    /// Run a group of more than one node without a secret: anyone who
    /// reaches the leader's port can take a rank. Off unless set.
    pub insecure: bool,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            rank: None,
            group_size: None,
            leader_address: None,
            node_address: None,
            master_port: 29500,
            gpus: None,
            heartbeat_ms: 500,
            heartbeat_timeout_ms: 5000,
            leader_wait_seconds: 600,
            secret_file: None,
            insecure: false,
        }
    }
}

/// The environment variable holding the group secret.
pub const SECRET_ENV: &str = "ORCHESTRATOR_GROUP_SECRET";

/// The group's secret and where it came from.
#[derive(Clone)]
pub struct GroupSecret {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The variable or file.
    pub from: String,
}

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupSecret(<redacted> from {})", self.from)
    }
}

/// A secret file that cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SecretFileError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The group's secret from `$ORCHESTRATOR_GROUP_SECRET` or `file` (at
/// most 64 KiB); none when neither is set.
pub fn group_secret(
    file: Option<&std::path::Path>,
) -> Result<Option<GroupSecret>, SecretFileError> {
    use std::io::Read;
    if let Some(value) = std::env::var_os(SECRET_ENV).filter(|v| !v.is_empty()) {
        return Ok(Some(GroupSecret {
            bytes: value.as_encoded_bytes().to_vec(),
            from: SECRET_ENV.into(),
        }));
    }
    let Some(path) = file else { return Ok(None) };
    let shown = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut bytes))
        .map_err(|e| SecretFileError {
            path: shown.clone(),
            reason: format!("cannot be read ({e})"),
        })?;
    Ok(Some(GroupSecret { bytes, from: shown }))
}
