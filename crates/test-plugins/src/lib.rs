//! Paths of test components, compiled by `build.rs` from
//! `crates/test-plugins/guests/*` and `examples/accelerator-readiness`
//! (all at the contract version the SDK builds), and of the contract 0.1.0
//! builds kept as binaries in `fixtures/` ([`v0_1`]).

/// A readiness policy that never returns.
pub const INFINITE_LOOP: &str = env!("TEST_PLUGIN_GUEST_INFINITE_LOOP");
/// A readiness policy that tries to allocate 1 GiB.
pub const MEMORY_BOMB: &str = env!("TEST_PLUGIN_GUEST_MEMORY_BOMB");
/// A readiness policy that panics.
pub const PANIC: &str = env!("TEST_PLUGIN_GUEST_PANIC");
/// A readiness policy that reports what the sandbox lets it see.
pub const SANDBOX_PROBE: &str = env!("TEST_PLUGIN_GUEST_SANDBOX_PROBE");
/// A health policy that logs and prints more than the host keeps.
pub const CHATTY: &str = env!("TEST_PLUGIN_GUEST_CHATTY");
/// A component exporting an unrelated world.
pub const WRONG_WORLD: &str = env!("TEST_PLUGIN_GUEST_WRONG_WORLD");
/// A readiness policy built for version 0.3.0 of the contract (unknown to
/// this host).
pub const WRONG_VERSION: &str = env!("TEST_PLUGIN_GUEST_WRONG_VERSION");
/// A launch policy whose plan comes from its parameters (`argv` split on
/// `|`, `env-key`, `env-value`).
pub const HOSTILE_LAUNCH: &str = env!("TEST_PLUGIN_GUEST_HOSTILE_LAUNCH");
/// The example custom policy in `examples/accelerator-readiness`.
pub const ACCELERATOR_READINESS: &str = env!("TEST_PLUGIN_ACCELERATOR_READINESS");

/// Components built for contract 0.1.0 with the SDK of that release, kept
/// as binaries (`fixtures/v0.1.0/`): the host must keep running them.
pub mod v0_1 {
    /// The example policy `accelerator-readiness`, 0.1.0 build.
    pub const ACCELERATOR_READINESS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/v0.1.0/accelerator-readiness.wasm"
    );
    /// A readiness policy that never returns, 0.1.0 build.
    pub const INFINITE_LOOP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/v0.1.0/infinite-loop.wasm"
    );
    /// A readiness policy that tries to allocate 1 GiB, 0.1.0 build.
    pub const MEMORY_BOMB: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/v0.1.0/memory-bomb.wasm"
    );
    /// A readiness policy that panics, 0.1.0 build.
    pub const PANIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/v0.1.0/panic.wasm");
}
