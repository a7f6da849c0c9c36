//! The one error type of the plugin host. Every message names the plugin,
//! what is wrong, and how to fix it.

use std::path::PathBuf;

/// Anything that can go wrong loading, checking or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin file {path}: {error}; check the path in the configuration")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },

    /// The file is not WebAssembly at all.
    #[error(
        "plugin `{plugin}` is not a WebAssembly file (it does not start with `\\0asm`); build it with `cargo build --target wasm32-wasip2 --release`"
    )]
    NotWasm {
        /// The plugin's name.
        plugin: String,
    },

    /// A core module where a component is needed.
    #[error(
        "plugin `{plugin}` is a core WebAssembly module, not a component; build it for `wasm32-wasip2` (not wasm32-unknown-unknown or wasm32-wasip1), or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// The plugin's name.
        plugin: String,
    },

    /// The bytes are not a valid component (truncated, corrupt).
    #[error("plugin `{plugin}` is not a valid component: {reason}; rebuild it")]
    Invalid {
        /// The plugin's name.
        plugin: String,
        /// What wasmtime said.
        reason: String,
    },

    /// The plugin's sha256 is not the one the configuration pins.
    #[error(
        "plugin `{plugin}` has sha256 {actual} but the configuration pins {expected}; if the new file is intended, update the pinned sha256"
    )]
    DigestMismatch {
        /// The plugin's name.
        plugin: String,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },

    /// The plugin exports the policy interface of another phase, or none.
    #[error(
        "plugin `{plugin}` does not implement {expected} world: it must export `{expected_export}`, but it exports {found}; implement the matching policy trait of the SDK and call its export macro"
    )]
    WrongWorld {
        /// The plugin's name.
        plugin: String,
        /// The world needed.
        expected: String,
        /// The export needed.
        expected_export: String,
        /// What it exports, listed.
        found: String,
    },

    /// The plugin was built against another version of the WIT package.
    #[error(
        "plugin `{plugin}` was built for {found}, but this orchestrator hosts ray-orchestrator:policy versions {} only (the health world up to 0.3.0, the others up to 0.2.0); rebuild it against this orchestrator's SDK",
        crate::Version::supported_list()
    )]
    WrongVersion {
        /// The plugin's name.
        plugin: String,
        /// What the plugin uses.
        found: String,
    },

    /// The plugin imports interfaces the host does not provide.
    #[error(
        "plugin `{plugin}` imports {imports}, which this orchestrator does not provide (plugins get `ray-orchestrator:policy/types` and `log` of their contract version and an empty WASI 0.2 sandbox); remove the dependency that pulls them in"
    )]
    UnsupportedImports {
        /// The plugin's name.
        plugin: String,
        /// The imports, comma-separated.
        imports: String,
    },

    /// The call used up its CPU budget (wasmtime fuel).
    #[error(
        "plugin `{plugin}` used up its CPU budget of about {limit_ms} ms ({fuel} fuel) without returning (an endless loop?); the call was stopped{stderr}"
    )]
    CpuBudget {
        /// The plugin's name.
        plugin: String,
        /// The budget, as CPU time on an unloaded core.
        limit_ms: u64,
        /// The budget in fuel.
        fuel: u64,
        /// The plugin's output, if any, prefixed for display.
        stderr: Stderr,
    },

    /// The call ran past its wall-clock backstop (ten times the CPU
    /// budget, at least 1 s).
    #[error(
        "plugin `{plugin}` did not return within its {limit_ms} ms wall-clock deadline; the call was stopped{stderr}"
    )]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// The wall-clock deadline.
        limit_ms: u64,
        /// The plugin's output, if any, prefixed for display.
        stderr: Stderr,
    },

    /// The plugin tried to grow its memory beyond the cap.
    #[error(
        "plugin `{plugin}` tried to grow its memory to {requested} bytes, past its cap of {limit} bytes; the call was stopped{stderr}"
    )]
    MemoryLimit {
        /// The plugin's name.
        plugin: String,
        /// The cap.
        limit: usize,
        /// The size it asked for.
        requested: usize,
        /// The plugin's output, if any.
        stderr: Stderr,
    },

    /// The plugin called `exit` (WASI `proc_exit`) inside a call.
    #[error(
        "plugin `{plugin}` called {status} during the call; a policy returns its answer rather than exiting{stderr}"
    )]
    Exited {
        /// The plugin's name.
        plugin: String,
        /// The exit status WASI carried.
        status: ExitStatus,
        /// The plugin's output, if any.
        stderr: Stderr,
    },

    /// The plugin handed the host more bytes in one call than the limit.
    #[error(
        "plugin `{plugin}` passed more than {limit} bytes to the host in one call (a log record or an answer that large), past the per-call copy limit; the call was stopped{stderr}"
    )]
    CopyLimit {
        /// The plugin's name.
        plugin: String,
        /// The limit in bytes.
        limit: usize,
        /// The plugin's output, if any.
        stderr: Stderr,
    },

    /// The plugin panicked.
    #[error("plugin `{plugin}` panicked{stderr}")]
    Panic {
        /// The plugin's name.
        plugin: String,
        /// The plugin's output (the panic message).
        stderr: Stderr,
    },

    /// Any other trap or host-side failure during a call.
    #[error("plugin `{plugin}` failed: {reason}{stderr}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// What wasmtime said.
        reason: String,
        /// The plugin's output, if any.
        stderr: Stderr,
    },

    /// A launch policy answered a plan that cannot be executed as given.
    #[error(
        "plugin `{plugin}` answered a launch plan that cannot be run: `{field}` {problem}; fix the policy's plan"
    )]
    InvalidPlan {
        /// The plugin's name.
        plugin: String,
        /// The field's path in the plan (`argv[2]`, `ranks[0].env[1].key`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The host itself could not be set up.
    #[error("the plugin host could not start: {0}")]
    Engine(String),
}

impl PluginError {
    /// True when the call ran out of time or CPU: on a loaded machine
    /// this may pass, so the wait phase retries rather than failing.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::CpuBudget { .. })
    }

    /// True for errors of a call (the plugin loaded fine but misbehaved);
    /// the host drops the instance and the next call starts afresh.
    pub fn is_call_failure(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::CpuBudget { .. }
                | Self::Exited { .. }
                | Self::CopyLimit { .. }
                | Self::MemoryLimit { .. }
                | Self::Panic { .. }
                | Self::Trap { .. }
                | Self::InvalidPlan { .. }
        )
    }

    /// The plugin's captured stderr, when the error carries it.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            Self::Timeout { stderr, .. }
            | Self::CpuBudget { stderr, .. }
            | Self::Exited { stderr, .. }
            | Self::CopyLimit { stderr, .. }
            | Self::MemoryLimit { stderr, .. }
            | Self::Panic { stderr, .. }
            | Self::Trap { stderr, .. } => Some(stderr.0.as_str()),
            _ => None,
        }
    }
}

/// The status a plugin passed to `exit`. WASI 0.2 carries only success
/// or failure: `exit(3)` arrives as 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub i32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => write!(f, "exit(0)"),
            code => write!(
                f,
                "exit({code}) or another failing exit (WASI 0.2 passes on only success or failure)"
            ),
        }
    }
}

/// A plugin's captured stderr; displays as `; stderr: ...` when non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stderr(pub String);

impl std::fmt::Display for Stderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.trim();
        if text.is_empty() {
            Ok(())
        } else {
            write!(f, "; plugin stderr: {}", text.replace('\n', " | "))
        }
    }
}
