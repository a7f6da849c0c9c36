//! wasmtime bindings for the policy worlds.
//!
//! One host-side world imports `log` and exports all three policy
//! interfaces; a plugin exports exactly one of them, and the host loads only
//! that export's functions (`GuestIndices`). The shared types map to
//! [`crate::types`], so the whole orchestrator uses one set of types.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    inline: "
        package ray-orchestrator:host;
        world host {
            import ray-orchestrator:policy/log@0.1.0;
            export ray-orchestrator:policy/readiness-policy@0.1.0;
            export ray-orchestrator:policy/launch-policy@0.1.0;
            export ray-orchestrator:policy/health-policy@0.1.0;
        }
    ",
    path: "../../wit/policy-0.1.0",
    world: "ray-orchestrator:host/host",
    with: {
        "ray-orchestrator:policy/types@0.1.0": crate::wire,
    },
});

pub use exports::ray_orchestrator::policy::{health_policy, launch_policy, readiness_policy};
pub use ray_orchestrator::policy::log;
