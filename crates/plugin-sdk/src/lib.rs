//! # orchestrator-plugin-sdk
//!
//! Write a policy for the Ray/vLLM orchestrator in a few lines. A policy is
//! a WebAssembly component that implements one of three worlds of the WIT
//! package `ray-orchestrator:policy@0.1.0`:
//!
//! | phase     | trait                          | export macro                  |
//! |-----------|--------------------------------|-------------------------------|
//! | readiness | [`readiness::ReadinessPolicy`] | [`export_readiness_policy!`]  |
//! | launch    | [`launch::LaunchPolicy`]       | [`export_launch_policy!`]     |
//! | health    | [`health::HealthPolicy`]       | [`export_health_policy!`]     |
//!
//! Implement the trait on a unit struct and call the macro once:
//!
//! ```ignore
//! use orchestrator_plugin_sdk::readiness::*;
//!
//! struct AllNodes;
//!
//! impl ReadinessPolicy for AllNodes {
//!     fn check(snapshot: &ClusterSnapshot, _params: &Params) -> Readiness {
//!         let alive = snapshot.nodes.iter().filter(|n| n.alive).count() as u32;
//!         if alive >= snapshot.expected.nodes {
//!             Readiness::Ready
//!         } else {
//!             Readiness::Wait(format!("{alive} of {} nodes alive", snapshot.expected.nodes))
//!         }
//!     }
//! }
//!
//! orchestrator_plugin_sdk::export_readiness_policy!(AllNodes);
//! ```
//!
//! with `crate-type = ["cdylib"]` in `Cargo.toml`, and build it with
//! `cargo build --target wasm32-wasip2 --release`. The result in
//! `target/wasm32-wasip2/release/<name>.wasm` is the plugin; try it with
//! `orchestrator plugin run <file> --input snapshot.json`.
//!
//! Plugins run sandboxed: no filesystem, network, environment variables or
//! clock; every call has a deadline and a memory cap. Everything a policy
//! may judge by is in its input. Use [`log`] to write to the orchestrator's
//! log.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod params;

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
                import ray-orchestrator:policy/types@0.1.0;
                import ray-orchestrator:policy/log@0.1.0;
            }
        ",
        path: "../../wit/policy-0.1.0",
        world: "ray-orchestrator:sdk/base",
        generate_all,
    });
}

/// The data types of `ray-orchestrator:policy/types@0.1.0`, shared by all
/// three worlds.
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
    pub use crate::Params;
    pub use crate::types::{
        ClusterSnapshot, KeyValue, Node, NodeGroup, Readiness, ResourceAmount, Resources, Topology,
    };

    /// Generated bindings of the `readiness` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.1.0",
            world: "ray-orchestrator:policy/readiness@0.1.0",
            with: {
                "ray-orchestrator:policy/types@0.1.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.1.0": crate::base::ray_orchestrator::policy::log,
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
        fn check(snapshot: &ClusterSnapshot, params: &Params) -> Readiness;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: ReadinessPolicy> bindings::exports::ray_orchestrator::policy::readiness_policy::Guest
        for Adapter<P>
    {
        fn check(snapshot: ClusterSnapshot, params: Vec<KeyValue>) -> Readiness {
            P::check(&snapshot, &Params::new(params))
        }
    }
}

/// Launch policies: build the argv and environment of the serving process.
pub mod launch {
    pub use crate::Params;
    pub use crate::types::{
        ClusterSnapshot, KeyValue, LaunchError, LaunchPlan, LaunchRequest, Node, Resources,
        ServeSettings, Topology,
    };

    /// Generated bindings of the `launch` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.1.0",
            world: "ray-orchestrator:policy/launch@0.1.0",
            with: {
                "ray-orchestrator:policy/types@0.1.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.1.0": crate::base::ray_orchestrator::policy::log,
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
        /// none can be built.
        fn plan(request: &LaunchRequest, params: &Params) -> Result<LaunchPlan, LaunchError>;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: LaunchPolicy> bindings::exports::ray_orchestrator::policy::launch_policy::Guest
        for Adapter<P>
    {
        fn plan(request: LaunchRequest, params: Vec<KeyValue>) -> Result<LaunchPlan, LaunchError> {
            P::plan(&request, &Params::new(params))
        }
    }
}

/// Health policies: judge the service and say what to do about it.
pub mod health {
    pub use crate::Params;
    pub use crate::types::{
        ExitStatus, HealthSnapshot, HealthVerdict, KeyValue, Node, NodeChange, NodeChangeKind,
        ProbeResult, RestartAction, ServerState, ShutdownAction,
    };

    /// Generated bindings of the `health` world.
    #[doc(hidden)]
    pub mod bindings {
        #![allow(missing_docs, clippy::all)]
        wit_bindgen::generate!({
            path: "../../wit/policy-0.1.0",
            world: "ray-orchestrator:policy/health@0.1.0",
            with: {
                "ray-orchestrator:policy/types@0.1.0": crate::base::ray_orchestrator::policy::types,
                "ray-orchestrator:policy/log@0.1.0": crate::base::ray_orchestrator::policy::log,
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
        /// `Shutdown`.
        fn evaluate(snapshot: &HealthSnapshot, params: &Params) -> HealthVerdict;
    }

    #[doc(hidden)]
    pub struct Adapter<P>(core::marker::PhantomData<P>);

    impl<P: HealthPolicy> bindings::exports::ray_orchestrator::policy::health_policy::Guest
        for Adapter<P>
    {
        fn evaluate(snapshot: HealthSnapshot, params: Vec<KeyValue>) -> HealthVerdict {
            P::evaluate(&snapshot, &Params::new(params))
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
