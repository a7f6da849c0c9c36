//! `[policies]`: each world's policy and its parameters. Entry point:
//! [`PoliciesConfig`].

use orchestrator_domain::KeyValue;
use orchestrator_policy_host::World;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which plugin serves one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A built-in policy's name.
    pub builtin: Option<String>,
    /// A component file.
    pub file: Option<PathBuf>,
    /// The file's sha256 (hex); the plugin is refused if it differs.
    pub sha256: Option<String>,
    /// A policy in an OCI registry, `oci://HOST/REPO:TAG@sha256:DIGEST`
    /// (the digest that `orchestrator plugin push` prints pins it).
    pub oci: Option<String>,
    /// The policy's parameters.
    pub params: BTreeMap<String, String>,
}

impl PolicyConfig {
    /// The parameters as key/value pairs.
    pub fn params(&self) -> Vec<KeyValue> {
        self.params
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect()
    }
}

/// The policy of each phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Readiness (default: built-in `node-count`).
    pub readiness: PolicyConfig,
    /// Launch (default: built-in `vllm`).
    pub launch: PolicyConfig,
    /// Health (default: built-in `default`).
    pub health: PolicyConfig,
    /// Node health, on every node (default: built-in `default`).
    pub node_health: PolicyConfig,
    /// Scale, on the head while serving with `[scale] enabled` (default:
    /// built-in `default`).
    pub scale: PolicyConfig,
}

impl PoliciesConfig {
    /// The configuration of `world`'s policy and its default built-in.
    pub(crate) fn for_world(&self, world: World) -> (&PolicyConfig, &'static str) {
        match world {
            World::Readiness => (&self.readiness, "node-count"),
            World::Launch => (&self.launch, "vllm"),
            World::Health => (&self.health, "default"),
            World::NodeHealth => (&self.node_health, "default"),
            World::Scale => (&self.scale, "default"),
        }
    }
}
