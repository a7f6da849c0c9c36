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
//! - [`serve`]: the serve phase: the launch policy's argv run as a
//!   supervised [`server`], probed over HTTP ([`probe`]), judged by the
//!   health policy, restarted or shut down as it says.
//! - [`facts`]: what a platform (Kubernetes) says about the cluster: the
//!   expected topology and why expected nodes have not joined.
//! - [`status`]: `/livez`, `/readyz`, `/status` and `/metrics`, and the
//!   phase changes and failures a platform records as Events.

mod child;
pub mod config;
pub mod facts;
pub mod limits;
pub mod probe;
pub mod procfs;
pub mod ray_node;
pub mod ray_start;
pub mod reaper;
pub mod serve;
pub mod server;
pub mod signals;
pub mod status;
pub mod wait;
