//! Paths of test components, compiled by `build.rs` from
//! `crates/test-plugins/guests/*` and `examples/accelerator-readiness`.

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
/// A readiness policy built for version 0.2.0 of the contract.
pub const WRONG_VERSION: &str = env!("TEST_PLUGIN_GUEST_WRONG_VERSION");
/// The example custom policy in `examples/accelerator-readiness`.
pub const ACCELERATOR_READINESS: &str = env!("TEST_PLUGIN_ACCELERATOR_READINESS");
