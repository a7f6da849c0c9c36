//! `[plugins]`: the limits every policy runs under. Entry point:
//! [`PluginLimits`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Limits of the plugin host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Deadline of one plugin call, ms.
    pub call_timeout_ms: u64,
    /// Memory cap of one plugin instance, MiB.
    pub memory_limit_mib: usize,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginLimits {
    /// The host's own defaults (100 ms, 64 MiB, the user's cache dir).
    fn default() -> Self {
        let host = orchestrator_policy_host::HostConfig::default();
        Self {
            call_timeout_ms: host.call_timeout.as_millis() as u64,
            memory_limit_mib: host.memory_limit_bytes / (1024 * 1024),
            cache_dir: None,
        }
    }
}

impl PluginLimits {
    /// The plugin host's configuration for these limits (no cache dir
    /// given: the host's default).
    pub fn host_config(&self) -> orchestrator_policy_host::HostConfig {
        let defaults = orchestrator_policy_host::HostConfig::default();
        orchestrator_policy_host::HostConfig {
            call_timeout: std::time::Duration::from_millis(self.call_timeout_ms.max(1)),
            memory_limit_bytes: self.memory_limit_mib.max(1) * 1024 * 1024,
            cache_dir: self.cache_dir.clone().or(defaults.cache_dir),
        }
    }
}
