#![warn(unreachable_pub)]
//! # orchestrator-domain
//!
//! The orchestrator's own vocabulary, shared by every crate and free of
//! any runtime: no wasmtime, no gRPC, no Kubernetes client.
//!
//! - [`types`] (re-exported here): nodes, cluster and health snapshots,
//!   launch requests and plans, verdicts: what the policies judge by. The
//!   policy host converts them to and from its WIT bindings.
//! - [`membership`]: what a membership source (Ray's GCS) reports.
//! - [`expected`]: the `[cluster]` configuration and the topology it
//!   implies.
//! - [`facts`]: what a platform (Kubernetes) says about the cluster.
//! - [`lifecycle`]: roles, phases and the events a platform records.
//! - [`node_health`]: a node's own readings and verdict, and the report
//!   it publishes for the head.
//! - [`checks`]: what the types cannot say about a policy's input and a
//!   launch plan (non-negative counts, executable argv and environment).
//! - [`scale`]: serving load samples, a scale policy's input and answer.
//! - [`startup`]: each rank's server stage, and a start that failed.

pub mod checks;
pub mod compile_cache;
pub mod expected;
pub mod facts;
pub mod lifecycle;
pub mod membership;
pub mod node_health;
pub mod prefetch;
pub mod scale;
pub mod secrets;
pub mod startup;
pub mod types;
pub mod world;

pub use checks::InvalidField;
pub use expected::{ClusterConfig, GroupConfig};
pub use facts::{ExternalFacts, MemberState};
pub use lifecycle::{Event, EventKind, EventReason, Phase, Role, StartupStep};
pub use membership::{ClusterView, MembershipChange, MembershipUpdate, UpdateSource};
pub use node_health::{
    GpuReading, HealthReport, LocalCopy, NodeHealth, NodeHealthState, NodeReadings, NodeVerdict,
    ThrottleReason, XidEvent,
};
pub use prefetch::{PrefetchProgress, PrefetchState};
pub use scale::{LoadSample, ScaleInput, ScaleInputError, ScaleRecommendation};
pub use startup::{RankStage, ServerStage, StageDeadlines, Stall, StartupFailure};
pub use types::*;
pub use world::{Version, World};
