#![warn(unreachable_pub)]
//! The built-in policies, embedded so the orchestrator works with no plugin
//! files. Their sources are in `plugins/`; `build.rs` compiles them to
//! `wasm32-wasip2` components with the plugin SDK.

/// One embedded policy component.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name a configuration uses (`builtin:<name>` on the command line).
    pub name: &'static str,
    /// The world it implements: `readiness`, `launch`, `health`,
    /// `node-health` or `scale`.
    pub world: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// The component's bytes.
    pub wasm: &'static [u8],
}

/// Every built-in, in phase order.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "node-count",
        world: "readiness",
        summary: "ready when N nodes are alive, with G GPUs in total and a per-node minimum when asked",
        wasm: include_bytes!(env!("BUILTIN_READINESS_NODE_COUNT_WASM")),
    },
    Builtin {
        name: "vllm",
        world: "launch",
        summary: "vllm serve with tensor/pipeline sizes from the cluster's GPUs and the Ray executor",
        wasm: include_bytes!(env!("BUILTIN_LAUNCH_VLLM_WASM")),
    },
    Builtin {
        name: "default",
        world: "health",
        summary: "restart on exit, dead node or failed probes, with backoff and a limit",
        wasm: include_bytes!(env!("BUILTIN_HEALTH_DEFAULT_WASM")),
    },
    Builtin {
        name: "default",
        world: "node-health",
        summary: "unhealthy on fatal XIDs, uncorrectable ECC, missing GPUs, failed remaps, a dead raylet; degraded on throttling, a full temp dir, a small /dev/shm",
        wasm: include_bytes!(env!("BUILTIN_NODE_HEALTH_DEFAULT_WASM")),
    },
    Builtin {
        name: "default",
        world: "scale",
        summary: "replicas for the load: requests per replica against a target, KV-cache pressure; up at once, down after a full window of less",
        wasm: include_bytes!(env!("BUILTIN_SCALE_DEFAULT_WASM")),
    },
];

/// No built-in has that name for that world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBuiltin {
    /// The world asked for (`readiness`, `launch`, `health`), or empty for any.
    pub world: String,
    /// The name asked for.
    pub name: String,
}

impl std::fmt::Display for UnknownBuiltin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let world = if self.world.is_empty() {
            "policy"
        } else {
            &self.world
        };
        let known: Vec<String> = BUILTINS
            .iter()
            .filter(|b| self.world.is_empty() || b.world == self.world)
            .map(|b| format!("builtin:{} ({})", b.name, b.world))
            .collect();
        write!(
            f,
            "there is no built-in {world} named `{}`; built-ins: {}",
            self.name,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownBuiltin {}

/// The built-in called `name` for `world` (empty: any world).
pub fn find(world: &str, name: &str) -> Result<&'static Builtin, UnknownBuiltin> {
    BUILTINS
        .iter()
        .find(|b| b.name == name && (world.is_empty() || b.world == world))
        .ok_or_else(|| UnknownBuiltin {
            world: world.to_string(),
            name: name.to_string(),
        })
}
