//! Raising the open-file limit for the orchestrator and, by inheritance,
//! every process it starts (Ray's daemons, vLLM). This replaces the
//! `ulimit -n 65536` that, typed in a shell, often never reaches Ray.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What raising the limit achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NofileOutcome {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit now.
    pub hard: u64,
    /// Set when the wanted value could not be reached, with the reason.
    pub(crate) short_of: Option<String>,
}

/// Raises `RLIMIT_NOFILE` to `want` (soft and, if needed and allowed,
/// hard). If the hard limit cannot be raised, raises the soft limit as far
/// as the hard limit allows and reports how far it fell short.
pub(crate) fn raise_nofile(want: u64) -> NofileOutcome {
    let current = getrlimit(Resource::Nofile);
    let unlimited = u64::MAX;
    let before = current.current.unwrap_or(unlimited);
    let hard = current.maximum.unwrap_or(unlimited);
    if before >= want {
        return NofileOutcome {
            before,
            now: before,
            hard,
            short_of: None,
        };
    }
    if hard >= want {
        let result = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: current.maximum,
            },
        );
        return match result {
            Ok(()) => NofileOutcome {
                before,
                now: want,
                hard,
                short_of: None,
            },
            Err(e) => NofileOutcome {
                before,
                now: before,
                hard,
                short_of: Some(format!("setrlimit failed: {e}")),
            },
        };
    }
    // Try to raise the hard limit too (needs CAP_SYS_RESOURCE).
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want),
        },
    )
    .is_ok()
    {
        return NofileOutcome {
            before,
            now: want,
            hard: want,
            short_of: None,
        };
    }
    let reached = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )
    .map(|()| hard)
    .unwrap_or(before);
    NofileOutcome {
        before,
        now: reached,
        hard,
        short_of: Some(format!(
            "the hard limit is {hard} and this process may not raise it (it needs CAP_SYS_RESOURCE); raise it in the container runtime or the pod's securityContext"
        )),
    }
}
