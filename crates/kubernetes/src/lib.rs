#![warn(unreachable_pub)]
//! # orchestrator-kubernetes
//!
//! Kubernetes awareness for the orchestrator's head pod, off unless
//! `kubernetes.enabled`:
//!
//! - [`config`]: the `[kubernetes]` table of the configuration;
//! - [`api`]: the client (in-cluster service account, or an explicit
//!   `kubernetes.api-server`), finding this pod's RayCluster, and API errors
//!   explained as the permission to grant;
//! - [`raycluster`]: the typed subset of KubeRay's `RayCluster` and AIBrix's
//!   `RayClusterFleet`, and the expected topology they imply;
//! - [`pods`]: one actionable line per worker pod that is not a Ray node
//!   (unschedulable, image pull, crash loop, running but not joined);
//! - [`watch`] and [`lws`]: a RayCluster, or a LeaderWorkerSet group, and
//!   its pods followed (one owner-and-pods follower for both) into the
//!   wait phase's [`orchestrator_domain::ExternalFacts`];
//! - [`events`]: phase changes, failures and restarts as rate-limited
//!   Events on the head pod.
//!
//! Nothing here can stop the orchestrator: every API error is logged and
//! reported, and the wait goes on from the GCS alone.

pub mod api;
pub mod config;
pub mod events;
mod follower;
pub mod lws;
pub mod pods;
pub mod raycluster;
pub mod watch;

pub use api::{KubeContext, KubeError, connect};
pub use config::KubernetesConfig;
pub use events::{RateLimit, record_events};
pub use watch::{watch_cluster, watch_cluster_for};
