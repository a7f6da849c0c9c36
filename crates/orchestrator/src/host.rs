//! Setting up the plugin host and loading a phase's policy.

use anyhow::{Context, Result};
use orchestrator_phases::config::{Config, PluginLimits};
use orchestrator_policy_host::{HostConfig, Plugin, PluginSource, PolicyHost, World};
use std::time::Duration;

/// The plugin host for these limits.
pub fn host(limits: &PluginLimits) -> Result<PolicyHost> {
    let defaults = HostConfig::default();
    Ok(PolicyHost::new(HostConfig {
        call_timeout: Duration::from_millis(limits.call_timeout_ms),
        memory_limit_bytes: limits.memory_limit_mib * 1024 * 1024,
        cache_dir: limits.cache_dir.clone().or(defaults.cache_dir),
    })?)
}

/// Loads the configured policy of `world`.
pub fn load_policy(host: &PolicyHost, config: &Config, world: World) -> Result<Plugin> {
    let (policy, default) = config.policies.for_world(world);
    let source = policy.source(default);
    load(host, world, &source).with_context(|| format!("policies.{world}"))
}

/// Loads `source` for `world`.
pub fn load(host: &PolicyHost, world: World, source: &PluginSource) -> Result<Plugin> {
    let mut plugin = host.load(world, source)?;
    // Instantiate now: a fault in the plugin's start-up shows at once, and
    // the first call (e.g. the launch right after ready) pays no set-up.
    plugin.instantiate()?;
    tracing::info!(
        world = %world,
        plugin = %plugin.name(),
        sha256 = %plugin.info().sha256,
        "policy loaded"
    );
    Ok(plugin)
}
