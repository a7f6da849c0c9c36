//! Which policy serves each phase: a [`PolicyRef`] (`builtin:NAME` or a
//! file, optionally pinned) resolved into what the plugin host loads
//! (built-ins are handed over as bytes), loaded and instantiated. Entry
//! point: [`Policies::load`].

use crate::config::{PluginLimits, PoliciesConfig};
use orchestrator_builtin_plugins::UnknownBuiltin;
use orchestrator_policy_host::{
    HealthPolicy, LaunchPolicy, NodeHealthPolicy, PluginError, PluginSource, PolicyHost,
    ReadinessPolicy, World,
};
use std::path::PathBuf;

/// A policy as a configuration or a command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRef {
    /// A built-in, by name (`node-count`, `vllm`, `default`).
    Builtin(String),
    /// A component file, optionally pinned by sha256 (hex).
    File {
        /// The file.
        path: PathBuf,
        /// The sha256 it must have.
        sha256: Option<String>,
    },
}

impl PolicyRef {
    /// Parses `builtin:NAME`, `builtin:WORLD/NAME` (e.g.
    /// `builtin:node-health/default`) or a file path.
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix("builtin:") {
            Some(name) => Self::Builtin(name.to_string()),
            None => Self::File {
                path: PathBuf::from(text),
                sha256: None,
            },
        }
    }

    /// The same policy pinned to `sha256` (files only; built-ins are part
    /// of the binary).
    pub fn pinned(self, sha256: Option<String>) -> Self {
        match (self, sha256) {
            (Self::File { path, .. }, Some(pin)) => Self::File {
                path,
                sha256: Some(pin),
            },
            (other, _) => other,
        }
    }

    /// What the plugin host loads; a built-in must exist for `world`
    /// (`None`: any world).
    pub fn source(&self, world: Option<World>) -> Result<PluginSource, PolicyError> {
        match self {
            Self::Builtin(name) => {
                // `builtin:WORLD/NAME` picks among built-ins of one name.
                let (world, name) = match name.split_once('/') {
                    Some((w, n)) => (w, n),
                    None => (world.map_or("", World::name), name.as_str()),
                };
                let builtin = orchestrator_builtin_plugins::find(world, name)?;
                Ok(PluginSource::Embedded {
                    name: format!("builtin:{}", builtin.name),
                    bytes: builtin.wasm,
                })
            }
            Self::File { path, sha256 } => Ok(PluginSource::File {
                path: path.clone(),
                sha256: sha256.clone(),
            }),
        }
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The plugin host could not be set up.
    #[error("cannot set up the plugin host: {0}")]
    Host(#[source] PluginError),
    /// No such built-in.
    #[error(transparent)]
    UnknownBuiltin(#[from] UnknownBuiltin),
    /// The plugin was refused or failed to start.
    #[error("{context}: {source}")]
    Load {
        /// Where it was configured (`policies.readiness`, `--policy`).
        context: String,
        /// What the host said.
        #[source]
        source: PluginError,
    },
}

/// The plugin host for these limits.
pub fn host(limits: &PluginLimits) -> Result<PolicyHost, PolicyError> {
    PolicyHost::new(limits.host_config()).map_err(PolicyError::Host)
}

fn loaded<P>(
    context: &str,
    world: World,
    result: Result<P, PluginError>,
    instantiate: impl FnOnce(&mut P) -> Result<(), PluginError>,
    describe: impl FnOnce(&P) -> (String, String),
) -> Result<P, PolicyError> {
    let fail = |source| PolicyError::Load {
        context: context.to_string(),
        source,
    };
    let mut plugin = result.map_err(fail)?;
    // Instantiate now: a fault in the plugin's start-up shows at once, and
    // the first call (e.g. the launch right after ready) pays no set-up.
    instantiate(&mut plugin).map_err(fail)?;
    let (name, sha256) = describe(&plugin);
    tracing::info!(world = %world, plugin = %name, sha256 = %sha256, "policy loaded");
    Ok(plugin)
}

/// Loads and instantiates a readiness policy; `context` names where it
/// was configured, for the error.
pub fn readiness(
    host: &PolicyHost,
    policy: &PolicyRef,
    context: &str,
) -> Result<ReadinessPolicy, PolicyError> {
    let source = policy.source(Some(World::Readiness))?;
    loaded(
        context,
        World::Readiness,
        host.readiness(&source),
        ReadinessPolicy::instantiate,
        |p| (p.name().to_string(), p.info().sha256.clone()),
    )
}

/// Loads and instantiates a launch policy.
pub fn launch(
    host: &PolicyHost,
    policy: &PolicyRef,
    context: &str,
) -> Result<LaunchPolicy, PolicyError> {
    let source = policy.source(Some(World::Launch))?;
    loaded(
        context,
        World::Launch,
        host.launch(&source),
        LaunchPolicy::instantiate,
        |p| (p.name().to_string(), p.info().sha256.clone()),
    )
}

/// Loads and instantiates a health policy.
pub fn health(
    host: &PolicyHost,
    policy: &PolicyRef,
    context: &str,
) -> Result<HealthPolicy, PolicyError> {
    let source = policy.source(Some(World::Health))?;
    loaded(
        context,
        World::Health,
        host.health(&source),
        HealthPolicy::instantiate,
        |p| (p.name().to_string(), p.info().sha256.clone()),
    )
}

/// Loads and instantiates a node-health policy (every node runs one).
pub fn node_health(
    host: &PolicyHost,
    policy: &PolicyRef,
    context: &str,
) -> Result<NodeHealthPolicy, PolicyError> {
    let source = policy.source(Some(World::NodeHealth))?;
    loaded(
        context,
        World::NodeHealth,
        host.node_health(&source),
        NodeHealthPolicy::instantiate,
        |p| (p.name().to_string(), p.info().sha256.clone()),
    )
}

/// The head's three policies, loaded and instantiated.
pub struct Policies {
    /// Decides when the cluster is ready.
    pub readiness: ReadinessPolicy,
    /// Builds the serving command.
    pub launch: LaunchPolicy,
    /// Judges health and picks an action.
    pub health: HealthPolicy,
}

impl Policies {
    /// Loads the configured policy of every world.
    pub fn load(host: &PolicyHost, config: &PoliciesConfig) -> Result<Self, PolicyError> {
        let policy = |world: World| config.for_world(world).0.policy(config.for_world(world).1);
        Ok(Self {
            readiness: readiness(host, &policy(World::Readiness), "policies.readiness")?,
            launch: launch(host, &policy(World::Launch), "policies.launch")?,
            health: health(host, &policy(World::Health), "policies.health")?,
        })
    }
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("readiness", &self.readiness.name())
            .field("launch", &self.launch.name())
            .field("health", &self.health.name())
            .finish()
    }
}
