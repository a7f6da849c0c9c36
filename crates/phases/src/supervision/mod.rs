//! Supervision of what the orchestrator starts: processes spawned in
//! their own process groups ([`child`]), the reaper that makes the
//! orchestrator a correct PID 1 ([`reaper`]), stop requests from signals
//! ([`signals`]), and `/proc` scans ([`procfs`]). Entry point:
//! [`prepare_process`], called once before anything is started.

pub(crate) mod child;
pub mod procfs;
pub(crate) mod reaper;
mod signals;

pub use signals::{Shutdown, Trigger};

/// Makes this process the "child subreaper" of everything it starts: Ray's
/// daemons, orphaned when `ray start` returns, are re-parented to the
/// orchestrator instead of to PID 1, so it can reap them and read their exit
/// status. (When the orchestrator *is* PID 1 this holds anyway.)
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(std::io::Error::from)
}

/// Sets up this process to supervise children (call inside the runtime):
/// installs the SIGTERM/SIGINT handlers, starts the orphan reaper and
/// becomes the subreaper of what it starts. Only the signal handlers are
/// required; the rest is logged when it cannot be had.
pub fn prepare_process() -> std::io::Result<Shutdown> {
    let shutdown = Shutdown::install()?;
    if let Err(e) = reaper::spawn_reaper() {
        tracing::warn!("cannot reap orphans ({e})");
    }
    if let Err(e) = become_subreaper() {
        tracing::warn!(
            "cannot become the subreaper of the processes started ({e}); PID 1 will reap them"
        );
    }
    Ok(shutdown)
}
