//! wasmtime bindings for what the host provides to a 0.2.0 policy: the
//! `types` interface with its `cluster` resource (implemented by
//! [`super::cluster`]) and the `log` import. The world's one exported
//! function is found and typed by [`crate::exports`].
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    inline: "
        package ray-orchestrator:host@0.2.0;
        world host {
            import ray-orchestrator:policy/types@0.2.0;
            import ray-orchestrator:policy/log@0.2.0;
        }
    ",
    path: "../../wit/policy-0.2.0",
    world: "ray-orchestrator:host/host@0.2.0",
    imports: { default: trappable },
    with: {
        "ray-orchestrator:policy/types.cluster": super::ClusterInput,
    },
});

#[allow(unreachable_pub)] // 0.3.0's bindings name them in `with`
pub use ray_orchestrator::policy::{log, types};
