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
