//! Supervision of what the orchestrator starts: processes spawned in
//! their own process groups ([`child`]), the reaper that makes the
//! orchestrator a correct PID 1 ([`reaper`]), stop requests from signals
//! ([`signals`]), and `/proc` scans ([`procfs`]). Entry point:
//! [`prepare_process`], called once before anything is started.

pub(crate) mod child;
pub mod procfs;
pub(crate) mod reaper;
mod signals;
pub(crate) mod termination;

pub use signals::{Shutdown, Trigger};

/// A task of the orchestrator's own that runs beside the phases (the
/// weights' fetch, the compile cache): stopped when dropped.
#[derive(Debug)]
pub(crate) struct Background(tokio::task::JoinHandle<()>);

impl Background {
    /// Runs `work` until it ends or this is dropped.
    pub(crate) fn spawn(work: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
pub(crate) fn prepare_process() -> std::io::Result<Shutdown> {
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

/// Ends this process now with `code`, after flushing stdout and stderr,
/// without running a destructor (the runtime with its connections, the
/// policy's instance): for a command whose caller waits on its exit, such
/// as `orchestrator wait`. Only for a process that started nothing
/// (nothing is stopped, reaped or drained here).
pub fn exit_at_once(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}

/// As PID 1 of a PID namespace (a container's init), ends what is still
/// running in the namespace before the orchestrator exits, instead of
/// leaving it to the kernel's SIGKILL: SIGTERM to every process, up to
/// `grace` for them to exit while every child is reaped, then SIGKILL and a
/// last reaping. Returns how many processes were reaped. Does nothing
/// unless this process is PID 1.
pub fn drain_namespace(grace: std::time::Duration) -> usize {
    use rustix::process::{
        Pid, Signal, WaitOptions, kill_process_group, test_kill_process_group, waitpid,
    };
    use std::time::{Duration, Instant};
    if rustix::process::getpid() != Pid::INIT {
        return 0;
    }
    // kill(-1, sig): every process this one may signal, which for the init
    // of a PID namespace is every other process of the namespace and
    // nothing outside it. (`kill_process_group` passes the negated pid; a
    // "process group 1" is exactly -1.) Only ever reached as PID 1.
    let everyone = |sig: Signal| kill_process_group(Pid::INIT, sig).is_ok();
    let mut reaped = 0;
    let mut reap_all = || {
        while let Ok(Some(_)) = waitpid(None, WaitOptions::NOHANG) {
            reaped += 1;
        }
    };
    if everyone(Signal::TERM) {
        tracing::info!("PID 1: SIGTERM sent to the processes left in the namespace");
        let deadline = Instant::now() + grace;
        // kill(-1, 0) fails (ESRCH) once nothing is left to signal.
        while Instant::now() < deadline && test_kill_process_group(Pid::INIT).is_ok() {
            reap_all();
            std::thread::sleep(Duration::from_millis(50));
        }
        if everyone(Signal::KILL) {
            tracing::warn!("PID 1: processes still running {grace:?} after SIGTERM; SIGKILL sent");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    reap_all();
    reaped
}

/// At most `limit` bytes of `pipe` as text (cut at a character boundary),
/// and whether there was more.
pub(crate) async fn read_at_most(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    limit: usize,
) -> (String, bool) {
    use tokio::io::AsyncReadExt as _;
    let Some(pipe) = pipe else {
        return (String::new(), false);
    };
    let mut bytes = Vec::new();
    let _ = pipe.take(limit as u64 + 1).read_to_end(&mut bytes).await;
    let cut = bytes.len() > limit;
    bytes.truncate(limit);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        // A character split at the limit shows as U+FFFD: drop it.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    (text, cut)
}
