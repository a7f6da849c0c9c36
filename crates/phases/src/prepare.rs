//! From a checked configuration to a lifecycle ready to run, on either
//! backend: the one plan builder of `orchestrator run`. Everything that
//! can be refused (Ray's token, the plan, a policy) is refused here,
//! before anything starts. Entry point: [`lifecycle_for`].

use crate::config::{Backend, Config, Role};
use crate::lifecycle::{Lifecycle, Plan, PlanError};
use crate::native::{IdentityError, NativeBackend, NativeIdentity, NativePlan, NativePlanError};
use crate::policies::{self, Policies, PolicyError};
use orchestrator_policy_host::{NodeHealthPolicy, World};

/// Why a configuration cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Ray's token authentication is configured in a way that cannot work.
    #[error(transparent)]
    RayAuth(#[from] orchestrator_ray_gcs::AuthError),
    /// The Ray plan cannot be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// This node's place in the native group cannot be resolved.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The native plan cannot be made.
    #[error(transparent)]
    NativePlan(#[from] NativePlanError),
    /// A policy cannot be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The RayCluster manifest given to `plan` cannot be read.
    #[error("{path}: {source}")]
    Manifest {
        /// Where it was read from.
        path: String,
        /// What is wrong with it.
        #[source]
        source: orchestrator_kubernetes::raycluster::ManifestError,
    },
    /// The Ray plan cannot be described.
    #[error(transparent)]
    Describe(#[from] crate::lifecycle::DescribeError),
    /// The launch policy failed on the native group.
    #[error("the launch policy failed: {0}")]
    NativeLaunch(#[source] orchestrator_policy_host::PluginError),
}

/// What `orchestrator plan` prints, and what people should be warned of.
#[derive(Debug, Clone)]
pub struct Described {
    /// The plan, as JSON.
    pub plan: serde_json::Value,
    /// Warnings about the plan (for stderr).
    pub warnings: Vec<String>,
}

/// The plan of `config` on its backend, as `orchestrator plan` prints it:
/// with a RayCluster manifest (`raycluster`: where it came from and its
/// text) the Ray cluster's shape is taken from it; `kuberay` and `env` as
/// for [`lifecycle_for`]. Policies are loaded where the node decides (a
/// head, a leader).
pub fn describe_plan(
    config: &Config,
    raycluster: Option<(&str, &str)>,
    kuberay: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Described, PrepareError> {
    if config.backend == Backend::Native {
        let identity = NativeIdentity::resolve(&config.native, env)?;
        let mut loaded = if identity.is_leader() {
            Some(Policies::of_config(config)?)
        } else {
            None
        };
        let plan =
            crate::native::describe(config, &identity, loaded.as_mut().map(|p| &mut p.launch))
                .map_err(PrepareError::NativeLaunch)?;
        return Ok(Described {
            plan,
            warnings: Vec::new(),
        });
    }
    let mut warnings = Vec::new();
    let topology = match raycluster {
        None => config.cluster.topology(),
        Some((path, text)) => {
            if config.role == Role::Head {
                warnings.extend(gateway_name_warning(config, text));
            }
            let manifest = orchestrator_kubernetes::raycluster::topology_from_yaml(text).map_err(
                |source| PrepareError::Manifest {
                    path: path.to_string(),
                    source,
                },
            )?;
            config.cluster.merge(manifest)
        }
    };
    let mut loaded = match config.role {
        Role::Head => Some(Policies::of_config(config)?),
        Role::Worker => None,
    };
    let plan = crate::lifecycle::describe(config, &topology, kuberay, loaded.as_mut())?;
    Ok(Described { plan, warnings })
}

/// A warning when AIBrix's gateway would route a model name that vLLM
/// does not serve: the gateway forwards the request's model unchanged to
/// the pods labelled with it, so vLLM must serve under that name.
fn gateway_name_warning(config: &Config, manifest: &str) -> Option<String> {
    let label = orchestrator_kubernetes::raycluster::aibrix_model_label(manifest)?;
    let served = config
        .serve
        .served_model_name
        .as_deref()
        .or(config.serve.model.as_deref())?;
    (served != label).then(|| {
        format!(
            "AIBrix's gateway routes model {label:?} (label {}) to this fleet and forwards that name unchanged, but vLLM serves {served:?}: requests would get 404. Set serve.served-model-name = {label:?} (or ORCHESTRATOR__SERVE__SERVED_MODEL_NAME={label})",
            orchestrator_kubernetes::raycluster::AIBRIX_MODEL_LABEL
        )
    })
}

/// The lifecycle of `config` on its backend: the plan, the policies of the
/// node that decides readiness (a head, a leader; none elsewhere) and the
/// node-health policy when node health is on. `kuberay` is KubeRay's
/// generated `ray start` command, when set; `env` reads the environment
/// (the native group's `LWS_*`, `HOSTNAME`, `POD_IP`).
pub fn lifecycle_for(
    config: &Config,
    kuberay: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Lifecycle, PrepareError> {
    let lifecycle = match config.backend {
        Backend::Ray => {
            // The Ray nodes started inherit the same environment.
            orchestrator_ray_gcs::RayAuth::from_env()?;
            let plan = Plan::from_config(config, kuberay)?;
            let policies = match config.role {
                Role::Head => Some(Policies::of_config(config)?),
                Role::Worker => None,
            };
            Lifecycle::new(plan, policies)
        }
        Backend::Native => {
            let identity = NativeIdentity::resolve(&config.native, env)?;
            tracing::info!(
                rank = identity.rank,
                group_size = identity.group_size,
                leader = %identity.leader_address,
                "native backend: {}",
                identity.sources.join(", ")
            );
            let plan = NativePlan::from_config(config, &identity)?;
            let policies = if identity.is_leader() {
                Some(Policies::of_config(config)?)
            } else {
                None
            };
            Lifecycle::of(NativeBackend::new(plan, policies))
        }
    };
    Ok(if config.node_health.enabled {
        lifecycle.with_node_health_policy(node_health_policy(config)?)
    } else {
        lifecycle
    })
}

/// The node-health policy every node checks itself with.
pub fn node_health_policy(config: &Config) -> Result<NodeHealthPolicy, PolicyError> {
    let host = policies::host(&config.plugins)?;
    let (policy, default) = config.policies.for_world(World::NodeHealth);
    let policy = policy.policy(default).fetched(&config.registry)?;
    policies::node_health(&host, &policy, "policies.node-health")
}
