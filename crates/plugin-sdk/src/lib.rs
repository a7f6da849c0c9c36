#![warn(unreachable_pub)]
//! # orchestrator-plugin-sdk
//!
//! Write a policy for the Ray/vLLM orchestrator in a few lines. A policy is
//! a WebAssembly component that implements one of five worlds of the WIT
//! package `ray-orchestrator:policy`: health at 0.3.0, the others at
//! 0.2.0 (0.3.0 changed only the health world):
//!
//! | phase       | trait                               | export macro                   |
//! |-------------|-------------------------------------|--------------------------------|
//! | readiness   | [`readiness::ReadinessPolicy`]      | [`export_readiness_policy!`]   |
//! | launch      | [`launch::LaunchPolicy`]            | [`export_launch_policy!`]      |
//! | health      | [`health::HealthPolicy`]            | [`export_health_policy!`]      |
//! | node health | [`node_health::NodeHealthPolicy`]   | [`export_node_health_policy!`] |
//! | scale       | [`scale::ScalePolicy`]              | [`export_scale_policy!`]       |
//!
//! Implement the trait on a unit struct and call the macro once:
//!
//! ```no_run
//! use orchestrator_plugin_sdk::readiness::*;
//!
//! struct AllNodes;
//!
//! impl ReadinessPolicy for AllNodes {
//!     fn check(cluster: &Cluster, _params: &Params) -> Readiness {
//!         // Answered by the host: the same cost at 3 nodes or 10,000.
//!         let alive = cluster.count(&Filter::alive());
//!         let want = cluster.expected().nodes;
//!         if alive >= want {
//!             return Readiness::Ready;
//!         }
//!         // Every node and its labels, when a policy needs them.
//!         let pending: Vec<&str> = cluster
//!             .nodes()
//!             .filter(|n| !n.alive() && n.label("ray.io/node-group") == Some("gpu"))
//!             .map(|n| n.name())
//!             .collect();
//!         Readiness::Wait(format!("{alive} of {want} nodes alive; dead GPU nodes: {pending:?}"))
//!     }
//! }
//!
//! orchestrator_plugin_sdk::export_readiness_policy!(AllNodes);
//! # fn main() {}
//! ```
//!
//! with `crate-type = ["cdylib"]` in `Cargo.toml`, and build it with
//! `cargo build --target wasm32-wasip2 --release`. The result in
//! `target/wasm32-wasip2/release/<name>.wasm` is the plugin; try it with
//! `orchestrator plugin run <file> --input snapshot.json`.
//!
//! The cluster stays in the orchestrator: [`Cluster::count`],
//! [`Cluster::totals`] and [`Cluster::totals_by_label`] are answered by the
//! host without copying any node, and [`Cluster::nodes`] fetches every node
//! once, packed, and hands out [`Node`] views (`name()`, `alive()`,
//! `gpu()`, `label(key)`, `labels()`, ...).
//!
//! Plugins run sandboxed: no filesystem, network, environment variables or
//! clock; every call has a deadline and a memory cap. Everything a policy
//! may judge by is in its input. Use [`log`] to write to the orchestrator's
//! log.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod cluster;
mod params;

pub use cluster::{Cluster, Filter, Node, NodeGroup, Topology, Totals};
pub use params::{ParamError, Params};

/// Generated bindings for the shared types and the log import. Not part of
/// the SDK's stable surface: use the re-exports in [`types`] and [`log`].
#[doc(hidden)]
pub mod base {
    #![allow(missing_docs, clippy::all)]
    wit_bindgen::generate!({
        inline: "
            package ray-orchestrator:sdk;
            world base {
                import ray-orchestrator:policy/types@0.2.0;
                import ray-orchestrator:policy/log@0.2.0;
            }
        ",
        path: "../../wit/policy-0.2.0",
        world: "ray-orchestrator:sdk/base",
        generate_all,
    });
}

/// The data types of `ray-orchestrator:policy/types@0.2.0`, shared by all
/// three worlds, as generated (the packed node table included); policies
/// use [`Cluster`] and [`Node`] instead of the raw table.
pub mod types {
    pub use crate::base::ray_orchestrator::policy::types::*;
}

/// Structured logging into the orchestrator's log.
///
/// ```ignore
/// orchestrator_plugin_sdk::log::info("waiting for GPUs", &[("missing", "2")]);
/// ```
pub mod log {
    use crate::base::ray_orchestrator::policy::log as wit;
    pub use wit::Level;

    use crate::types::KeyValue;

    /// Writes one record at `level` with `fields` as key/value pairs.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<KeyValue> = fields
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_string(),
                value: (*v).to_string(),
            })
            .collect();
        wit::log(level, message, &fields);
    }

    /// Writes a debug record.
    pub fn debug(message: &str, fields: &[(&str, &str)]) {
        log(Level::Debug, message, fields);
    }

    /// Writes an info record.
    pub fn info(message: &str, fields: &[(&str, &str)]) {
        log(Level::Info, message, fields);
    }

    /// Writes a warning record.
    pub fn warn(message: &str, fields: &[(&str, &str)]) {
        log(Level::Warn, message, fields);
    }

    /// Writes an error record.
    pub fn error(message: &str, fields: &[(&str, &str)]) {
        log(Level::Error, message, fields);
    }
}

/// Readiness policies: decide when the cluster is ready to serve.
pub mod readiness {
    pub use crate::types::{KeyValue, NodeHealthState, Readiness};
    pub use crate::{Cluster, Filter, Node, NodeGroup, Params, Topology, Totals};

    /// Generated bindings of the `readiness` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.2.0",
            world: "ray-orchestrator:policy/readiness@0.2.0",
            with: {
                "ray-orchestrator:policy/types@0.2.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.2.0": crate::base::ray_orchestrator::policy::log,
            },
            pub_export_macro: true,
            export_macro_name: "__export_readiness_world",
            default_bindings_module: "orchestrator_plugin_sdk::readiness::bindings",
        });
    }

    /// A readiness policy. Implement it on a unit struct and export it with
    /// [`export_readiness_policy!`](crate::export_readiness_policy).
    pub trait ReadinessPolicy {
        /// Judges the cluster: `Ready`, `Wait(what is missing)` or
        /// `Fail(why)`. Called on every membership change.
        fn check(cluster: &Cluster, params: &Params) -> Readiness;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: ReadinessPolicy> bindings::exports::ray_orchestrator::policy::readiness_policy::Guest
        for Adapter<P>
    {
        fn check(cluster: &crate::types::Cluster, params: Vec<KeyValue>) -> Readiness {
            P::check(&Cluster::new(cluster), &Params::new(params))
        }
    }
}

/// Launch policies: build the argv and environment of the serving process.
pub mod launch {
    pub use crate::types::{
        KeyValue, LaunchError, LaunchPlan, NativeGroup, RankPlan, ServeSettings,
    };
    pub use crate::{Cluster, Filter, Node, NodeGroup, Params, Topology, Totals};

    /// Generated bindings of the `launch` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.2.0",
            world: "ray-orchestrator:policy/launch@0.2.0",
            with: {
                "ray-orchestrator:policy/types@0.2.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.2.0": crate::base::ray_orchestrator::policy::log,
            },
            pub_export_macro: true,
            export_macro_name: "__export_launch_world",
            default_bindings_module: "orchestrator_plugin_sdk::launch::bindings",
        });
    }

    /// A launch policy. Implement it on a unit struct and export it with
    /// [`export_launch_policy!`](crate::export_launch_policy).
    pub trait LaunchPolicy {
        /// Returns the serving process's argv and extra environment, or why
        /// none can be built. `cluster` is the cluster as it was when the
        /// readiness policy said ready.
        fn plan(
            cluster: &Cluster,
            settings: &ServeSettings,
            params: &Params,
        ) -> Result<LaunchPlan, LaunchError>;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: LaunchPolicy> bindings::exports::ray_orchestrator::policy::launch_policy::Guest
        for Adapter<P>
    {
        fn plan(
            cluster: &crate::types::Cluster,
            settings: ServeSettings,
            params: Vec<KeyValue>,
        ) -> Result<LaunchPlan, LaunchError> {
            P::plan(&Cluster::new(cluster), &settings, &Params::new(params))
        }
    }
}

/// Health policies: judge the service and say what to do about it
/// (contract 0.3.0: the snapshot carries the server's start rank by rank).
pub mod health {
    pub use self::bindings::exports::ray_orchestrator::policy0_3_0::health_policy::{
        HealthSnapshot, RankStage, ServerStage, Stall, StartupFailure,
    };
    pub use crate::types::{
        ExitStatus, HealthVerdict, KeyValue, NodeChange, NodeChangeKind, NodeHealthState,
        ProbeResult, RestartAction, ServerState, ShutdownAction,
    };
    pub use crate::{Cluster, Filter, Node, Params, Totals};

    /// Generated bindings of the `health` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.3.0",
            world: "ray-orchestrator:policy/health@0.3.0",
            with: {
                "ray-orchestrator:policy/types@0.2.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.2.0": crate::base::ray_orchestrator::policy::log,
            },
            pub_export_macro: true,
            export_macro_name: "__export_health_world",
            default_bindings_module: "orchestrator_plugin_sdk::health::bindings",
        });
    }

    /// A health policy. Implement it on a unit struct and export it with
    /// [`export_health_policy!`](crate::export_health_policy).
    pub trait HealthPolicy {
        /// Judges one health snapshot: `Healthy`, `Degraded`, `Restart` or
        /// `Shutdown`. `cluster` holds every node; [`Node::serving`] says
        /// which ones the server was launched with. The snapshot's
        /// `stages`, `stall` and `last_failure` tell how the server's start
        /// goes, rank by rank.
        fn evaluate(snapshot: &HealthSnapshot, cluster: &Cluster, params: &Params)
        -> HealthVerdict;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: HealthPolicy> bindings::exports::ray_orchestrator::policy0_3_0::health_policy::Guest
        for Adapter<P>
    {
        fn evaluate(
            snapshot: HealthSnapshot,
            cluster: &crate::types::Cluster,
            params: Vec<KeyValue>,
        ) -> HealthVerdict {
            P::evaluate(&snapshot, &Cluster::new(cluster), &Params::new(params))
        }
    }
}

/// Node-health policies: judge one node's own readings (GPUs, host, Ray).
pub mod node_health {
    pub use crate::Params;
    pub use crate::types::{
        GpuReading, KeyValue, NodeReadings, NodeVerdict, ThrottleReasons, XidEvent,
    };

    /// Generated bindings of the `node-health` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.2.0",
            world: "ray-orchestrator:policy/node-health@0.2.0",
            with: {
                "ray-orchestrator:policy/types@0.2.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.2.0": crate::base::ray_orchestrator::policy::log,
            },
            pub_export_macro: true,
            export_macro_name: "__export_node_health_world",
            default_bindings_module: "orchestrator_plugin_sdk::node_health::bindings",
        });
    }

    /// A node-health policy. Implement it on a unit struct and export it
    /// with [`export_node_health_policy!`](crate::export_node_health_policy).
    pub trait NodeHealthPolicy {
        /// Judges one probe round of this node's readings: `Healthy`,
        /// `Degraded(why)` or `Unhealthy(why)`. Called at the probe
        /// interval (1 s by default) on every node.
        fn judge(readings: &NodeReadings, params: &Params) -> NodeVerdict;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: NodeHealthPolicy> bindings::exports::ray_orchestrator::policy::node_health_policy::Guest
        for Adapter<P>
    {
        fn judge(readings: NodeReadings, params: Vec<KeyValue>) -> NodeVerdict {
            P::judge(&readings, &Params::new(params))
        }
    }
}

/// Scale policies: recommend the serving replicas the load needs.
///
/// ```no_run
/// use orchestrator_plugin_sdk::scale::*;
///
/// struct QueueDepth;
///
/// impl ScalePolicy for QueueDepth {
///     fn recommend(input: &ScaleInput, params: &Params) -> ScaleRecommendation {
///         let per_replica = params.f64_or("requests-per-replica", 8.0).unwrap_or(8.0);
///         let newest = input.samples.last().map_or(0.0, |s| s.running + s.waiting);
///         let want = (newest / per_replica).ceil() as u32;
///         ScaleRecommendation {
///             desired_replicas: want.clamp(input.min_replicas, input.max_replicas),
///             reason: format!("{newest} requests at {per_replica} a replica"),
///         }
///     }
/// }
///
/// orchestrator_plugin_sdk::export_scale_policy!(QueueDepth);
/// # fn main() {}
/// ```
pub mod scale {
    pub use crate::Params;
    pub use crate::types::{KeyValue, LoadSample, ScaleInput, ScaleRecommendation};

    /// Generated bindings of the `scale` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.2.0",
            world: "ray-orchestrator:policy/scale@0.2.0",
            with: {
                "ray-orchestrator:policy/types@0.2.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.2.0": crate::base::ray_orchestrator::policy::log,
            },
            pub_export_macro: true,
            export_macro_name: "__export_scale_world",
            default_bindings_module: "orchestrator_plugin_sdk::scale::bindings",
        });
    }

    /// A scale policy. Implement it on a unit struct and export it with
    /// [`export_scale_policy!`](crate::export_scale_policy).
    pub trait ScalePolicy {
        /// Recommends the replicas for the window of load in `input`
        /// (samples oldest first). Called after every sample while
        /// serving; the host keeps the window and the previous answer.
        fn recommend(input: &ScaleInput, params: &Params) -> ScaleRecommendation;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: ScalePolicy> bindings::exports::ray_orchestrator::policy::scale_policy::Guest
        for Adapter<P>
    {
        fn recommend(input: ScaleInput, params: Vec<KeyValue>) -> ScaleRecommendation {
            P::recommend(&input, &Params::new(params))
        }
    }
}

/// Exports a [`readiness::ReadinessPolicy`] implementation as the
/// component's `readiness` world. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export_readiness_policy {
    ($policy:ty) => {
        type __OrchestratorReadinessAdapter = $crate::readiness::Adapter<$policy>;
        $crate::readiness::bindings::__export_readiness_world!(__OrchestratorReadinessAdapter with_types_in $crate::readiness::bindings);
    };
}

/// Exports a [`launch::LaunchPolicy`] implementation as the component's
/// `launch` world. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export_launch_policy {
    ($policy:ty) => {
        type __OrchestratorLaunchAdapter = $crate::launch::Adapter<$policy>;
        $crate::launch::bindings::__export_launch_world!(__OrchestratorLaunchAdapter with_types_in $crate::launch::bindings);
    };
}

/// Exports a [`health::HealthPolicy`] implementation as the component's
/// `health` world. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export_health_policy {
    ($policy:ty) => {
        type __OrchestratorHealthAdapter = $crate::health::Adapter<$policy>;
        $crate::health::bindings::__export_health_world!(__OrchestratorHealthAdapter with_types_in $crate::health::bindings);
    };
}

/// Exports a [`node_health::NodeHealthPolicy`] implementation as the
/// component's `node-health` world. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export_node_health_policy {
    ($policy:ty) => {
        type __OrchestratorNodeHealthAdapter = $crate::node_health::Adapter<$policy>;
        $crate::node_health::bindings::__export_node_health_world!(__OrchestratorNodeHealthAdapter with_types_in $crate::node_health::bindings);
    };
}

/// Exports a [`scale::ScalePolicy`] implementation as the component's
/// `scale` world. Call it once, at the crate's top level.
#[macro_export]
macro_rules! export_scale_policy {
    ($policy:ty) => {
        type __OrchestratorScaleAdapter = $crate::scale::Adapter<$policy>;
        $crate::scale::bindings::__export_scale_world!(__OrchestratorScaleAdapter with_types_in $crate::scale::bindings);
    };
}
