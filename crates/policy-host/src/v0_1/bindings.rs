//! wasmtime bindings for what the host provides to every policy: the `log`
//! import. The one function a policy exports is found and typed by
//! [`crate::exports`] (its inputs borrow, which the generated export
//! bindings cannot express). The shared types map to [`crate::v0_1::wire`].
#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    inline: "
        package ray-orchestrator:host;
        world host {
            import ray-orchestrator:policy/log@0.1.0;
        }
    ",
    path: "../../wit/policy-0.1.0",
    world: "ray-orchestrator:host/host",
    with: {
        "ray-orchestrator:policy/types@0.1.0": crate::v0_1::wire,
    },
});

pub(crate) use ray_orchestrator::policy::log;
