//! `[serve.compile-cache]` as `/status` shows it: where this node's
//! compile cache stands (the orchestrator's phases keep it). Entry point:
//! [`CacheView`].

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where this node's cache stands.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CacheState {
    /// Reading the inputs (waiting for the weights' revision, asking the
    /// vLLM version), or asking peers.
    #[default]
    Preparing,
    /// A cache with these inputs served before here.
    Hit,
    /// Taken from a peer.
    Pulled,
    /// None here or at a peer: vLLM compiles (the reason says why).
    Miss,
    /// The inputs could not be read: vLLM's default cache is used.
    Failed,
}

/// `/status`'s `compile-cache`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct CacheView {
    /// Where it stands.
    pub state: CacheState,
    /// The key (a digest of the inputs).
    pub key: String,
    /// The folder (`<dir>/<key>/cache`).
    pub folder: Option<PathBuf>,
    /// What the key is made of.
    pub inputs: BTreeMap<String, String>,
    /// Why it missed, or failed.
    pub reason: Option<String>,
    /// The peer it came from, when pulled.
    pub from: Option<String>,
    /// The revision this node offers its peers, once the group serves.
    pub offered: Option<String>,
    /// Files taken from each peer after the group served.
    pub gathered: BTreeMap<String, usize>,
}
