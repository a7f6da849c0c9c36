//! Which policy serves each phase: a [`PolicyRef`] (`builtin:NAME`, a
//! file optionally pinned, or `oci://` pulled into the cache by
//! [`PolicyRef::fetched`]) resolved into what the plugin host loads
//! (built-ins are handed over as bytes), loaded and instantiated. Entry
//! point: [`Policies::load`].

use crate::config::{PluginLimits, PoliciesConfig, PolicyConfig, RegistryConfig};
use orchestrator_builtin_plugins::UnknownBuiltin;
use orchestrator_policy_host::{
    HealthPolicy, LaunchPolicy, NodeHealthPolicy, PluginError, PluginSource, PolicyHost,
    ReadinessPolicy, ScalePolicy, World,
};
use std::path::PathBuf;

impl PolicyConfig {
    /// Which plugin this is, `default` naming the built-in used when
    /// neither `builtin` nor `file` is set.
    pub fn policy(&self, default: &str) -> PolicyRef {
        if let Some(reference) = &self.oci {
            return PolicyRef::Oci(reference.clone());
        }
        match (&self.file, &self.builtin) {
            (Some(path), _) => PolicyRef::File {
                path: path.clone(),
                sha256: self.sha256.clone(),
            },
            (None, Some(name)) => PolicyRef::Builtin(name.clone()),
            (None, None) => PolicyRef::Builtin(default.to_string()),
        }
    }
}

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
    /// A policy in an OCI registry (`oci://HOST/REPO:TAG@sha256:...`),
    /// loadable once [`PolicyRef::fetched`].
    Oci(String),
    /// An `oci://` policy after [`PolicyRef::fetched`]: its cached file.
    Pulled {
        /// The reference pinned to the manifest's digest.
        reference: String,
        /// The cached component.
        path: PathBuf,
        /// The component's sha256 (hex).
        sha256: String,
    },
}

impl PolicyRef {
    /// Parses `builtin:NAME`, `builtin:WORLD/NAME` (e.g.
    /// `builtin:node-health/default`), `oci://...` or a file path.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("oci://") {
            return Self::Oci(text.to_string());
        }
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
            Self::Oci(reference) => Err(PolicyError::NotFetched(reference.clone())),
            Self::Pulled {
                reference,
                path,
                sha256,
            } => Ok(PluginSource::Pulled {
                name: reference.clone(),
                path: path.clone(),
                sha256: sha256.clone(),
            }),
        }
    }

    /// An `oci://` policy pulled (or found in the cache, when pinned) and
    /// turned into its cached file pinned to the layer's sha256; anything
    /// else as it is. Runs on a thread of its own, so it may be called
    /// with or without an async runtime.
    pub fn fetched(self, registry: &RegistryConfig) -> Result<Self, PolicyError> {
        let Self::Oci(text) = &self else {
            return Ok(self);
        };
        let pulled = pull(text, registry)?;
        Ok(Self::Pulled {
            reference: pulled.reference.to_string(),
            path: pulled.path,
            sha256: pulled.layer.hex().to_string(),
        })
    }
}

/// Pulls `text` (an `oci://` reference) with `registry`'s settings.
pub fn pull(
    text: &str,
    registry: &RegistryConfig,
) -> Result<orchestrator_oci::Pulled, PolicyError> {
    let reference = orchestrator_oci::Reference::parse(text)?;
    let pinned = reference.digest.is_some();
    let settings = registry.settings()?;
    let pulled = run_blocking(async move {
        let client = orchestrator_oci::Registry::new(settings)?;
        client.pull(&reference).await
    })?;
    if pinned {
        tracing::info!(policy = %text, layer = %pulled.layer, cached = pulled.from_cache, "policy pulled");
    } else {
        tracing::warn!(
            policy = %text,
            pinned = %pulled.reference,
            "policy pulled by tag alone: a tag can move; pin it as {}",
            pulled.reference
        );
    }
    Ok(pulled)
}

/// Runs `work` on a current-thread runtime on a thread of its own.
pub fn run_blocking<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, orchestrator_oci::OciError>> + Send + 'static,
) -> Result<T, PolicyError> {
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PolicyError::Runtime(e.to_string()))?;
        runtime.block_on(work).map_err(PolicyError::from)
    });
    thread
        .join()
        .map_err(|_| PolicyError::Runtime("the registry client's thread stopped".into()))?
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
    /// An `oci://` reference that does not parse.
    #[error(transparent)]
    Reference(#[from] orchestrator_oci::ReferenceError),
    /// The registry credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] orchestrator_oci::CredentialsError),
    /// A pull or push failed.
    #[error(transparent)]
    Oci(#[from] orchestrator_oci::OciError),
    /// An `oci://` policy handed to the host before it was pulled.
    #[error("{0} was not pulled before loading (an orchestrator bug: PolicyRef::fetched)")]
    NotFetched(String),
    /// No thread or runtime for the registry client.
    #[error("cannot run the registry client: {0}")]
    Runtime(String),
    /// An `oci://` policy could not be pulled.
    #[error("{context}: {source}")]
    Fetch {
        /// Where it was configured.
        context: String,
        /// Why.
        #[source]
        source: Box<PolicyError>,
    },
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

/// Loads and instantiates a scale policy (the head runs one while
/// serving, with `[scale] enabled`).
pub fn scale(
    host: &PolicyHost,
    policy: &PolicyRef,
    context: &str,
) -> Result<ScalePolicy, PolicyError> {
    let source = policy.source(Some(World::Scale))?;
    loaded(
        context,
        World::Scale,
        host.scale(&source),
        ScalePolicy::instantiate,
        |p| (p.name().to_string(), p.info().sha256.clone()),
    )
}

/// The head's policies, loaded and instantiated.
pub struct Policies {
    /// Decides when the cluster is ready.
    pub readiness: ReadinessPolicy,
    /// Builds the serving command.
    pub launch: LaunchPolicy,
    /// Judges health and picks an action.
    pub health: HealthPolicy,
    /// Recommends replicas for the load, with `[scale]` on.
    pub scale: Option<ScalePolicy>,
}

impl Policies {
    /// Loads the configured policy of every world (`oci://` ones pulled
    /// with `registry`'s settings first).
    pub fn load(
        host: &PolicyHost,
        config: &PoliciesConfig,
        registry: &RegistryConfig,
    ) -> Result<Self, PolicyError> {
        let policy = |world: World| {
            let (configured, default) = config.for_world(world);
            configured
                .policy(default)
                .fetched(registry)
                .map_err(|e| PolicyError::Fetch {
                    context: format!("policies.{world}"),
                    source: Box::new(e),
                })
        };
        Ok(Self {
            readiness: readiness(host, &policy(World::Readiness)?, "policies.readiness")?,
            launch: launch(host, &policy(World::Launch)?, "policies.launch")?,
            health: health(host, &policy(World::Health)?, "policies.health")?,
            scale: None,
        })
    }

    /// Every policy of the node that decides readiness (a Ray head, a
    /// native leader), on either backend: readiness, launch, health, and
    /// scale when `[scale]` is on; `oci://` ones pulled first.
    pub(crate) fn of_config(config: &crate::config::Config) -> Result<Self, PolicyError> {
        let host = host(&config.plugins)?;
        let loaded = Self::load(&host, &config.policies, &config.registry)?;
        if config.scale.enabled {
            loaded.with_scale(&host, &config.policies, &config.registry)
        } else {
            Ok(loaded)
        }
    }

    /// Adds the configured scale policy (`oci://` pulled first).
    pub(crate) fn with_scale(
        mut self,
        host: &PolicyHost,
        config: &PoliciesConfig,
        registry: &RegistryConfig,
    ) -> Result<Self, PolicyError> {
        let (configured, default) = config.for_world(World::Scale);
        let policy =
            configured
                .policy(default)
                .fetched(registry)
                .map_err(|e| PolicyError::Fetch {
                    context: "policies.scale".into(),
                    source: Box::new(e),
                })?;
        self.scale = Some(scale(host, &policy, "policies.scale")?);
        Ok(self)
    }
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("readiness", &self.readiness.name())
            .field("launch", &self.launch.name())
            .field("health", &self.health.name())
            .field("scale", &self.scale.as_ref().map(|p| p.name().to_string()))
            .finish()
    }
}

/// The built-in policies as `orchestrator plugin list` prints them: name,
/// world, contract version and sha256, one a line under a header.
pub fn builtins_table(host: &PolicyHost) -> Result<String, PluginError> {
    let mut out = format!("{:<12} {:<11} {:<8} SHA256\n", "NAME", "WORLD", "VERSION");
    for builtin in orchestrator_builtin_plugins::BUILTINS {
        let info = host.inspect(&PluginSource::Embedded {
            name: format!("builtin:{}", builtin.name),
            bytes: builtin.wasm,
        })?;
        out.push_str(&format!(
            "{:<12} {:<11} {:<8} {}\n",
            builtin.name, info.world, info.version, info.sha256
        ));
    }
    Ok(out)
}

/// A policy named on a command line: its reference, and the flag that
/// named it (errors name the flag).
#[derive(Debug, Clone)]
pub struct Named<'a> {
    /// The policy.
    pub policy: PolicyRef,
    /// The flag, e.g. `--launch-policy`.
    pub flag: &'a str,
}

impl Policies {
    /// The policies named on a command line (`orchestrator local`): the
    /// scale policy only when given.
    pub fn of_named(
        host: &PolicyHost,
        readiness_policy: Named<'_>,
        launch_policy: Named<'_>,
        health_policy: Named<'_>,
        scale_policy: Option<Named<'_>>,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            readiness: readiness(host, &readiness_policy.policy, readiness_policy.flag)?,
            launch: launch(host, &launch_policy.policy, launch_policy.flag)?,
            health: health(host, &health_policy.policy, health_policy.flag)?,
            scale: scale_policy
                .map(|s| scale(host, &s.policy, s.flag))
                .transpose()?,
        })
    }
}
