//! wasmtime bindings for contract 0.3.0's health world. Its shared types
//! and the `log` import are 0.2.0's, so they map onto [`crate::v0_2`]'s
//! bindings: a 0.3.0 plugin gets the same `cluster` resource.
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../wit/policy-0.3.0",
    world: "ray-orchestrator:policy/health@0.3.0",
    imports: { default: trappable },
    with: {
        "ray-orchestrator:policy/types@0.2.0": crate::v0_2::bindings::types,
        "ray-orchestrator:policy/log@0.2.0": crate::v0_2::bindings::log,
    },
});

pub(crate) use exports::ray_orchestrator::policy0_3_0::health_policy as health;
