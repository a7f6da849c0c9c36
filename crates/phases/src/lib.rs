//! # orchestrator-phases
//!
//! The phase engine of the orchestrator:
//!
//! - [`config`]: the configuration file, with every field overridable by
//!   environment variables and `--set` flags, checked with
//!   `deny_unknown_fields`.
//! - [`ray_start`]: the `ray start` argv, built from the configuration or
//!   parsed from KubeRay's `KUBERAY_GEN_RAY_START_CMD` (no shell, `--block`
//!   dropped).
//! - [`limits`]: raising `RLIMIT_NOFILE` for the whole process tree.
//! - [`ray_node`]: a supervised Ray node: started in its own process group,
//!   its daemons watched through pidfds, stopped by process group.
//! - [`wait`]: the wait phase: GCS membership into readiness snapshots,
//!   decided by the readiness policy.

pub mod config;
pub mod limits;
pub mod ray_node;
pub mod ray_start;
pub mod wait;
