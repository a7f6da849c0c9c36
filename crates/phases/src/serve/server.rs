//! The serving process (vLLM): started from the launch policy's argv as a
//! child in its own process group (never through a shell), its output
//! forwarded to the log, stopped by process group with a grace period.

use orchestrator_domain::ExitStatus;
use rustix::process::{Pid, Signal, kill_process_group};
use std::time::Duration;
use tokio::process::Child;

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    /// The argv is empty.
    #[error("the launch policy returned an empty argv")]
    EmptyArgv,
    /// The program could not be run.
    #[error("cannot run {program}: {error}; check the launch policy's `program` parameter or PATH")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
}

/// A running serving process.
pub struct ServerProcess {
    child: Child,
    pgid: Option<Pid>,
    exited: Option<ExitStatus>,
    watch: super::startup::OutputWatch,
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
    }
}

impl ServerProcess {
    /// Starts `argv` with `env` added, in a new process group; `watch`
    /// reads its output (see [`OutputWatch`](super::startup::OutputWatch)).
    pub(crate) fn spawn(
        label: &str,
        argv: &[String],
        env: &[(String, String)],
        watch: super::startup::OutputWatch,
    ) -> Result<Self, ServerError> {
        let program = argv.first().ok_or(ServerError::EmptyArgv)?;
        // What a killed vLLM left in /dev/shm would fail this one's start
        // if it draws the same port.
        super::shm::remove_orphaned_segments(std::path::Path::new(super::shm::SHM_DIR));
        let observer = {
            let watch = watch.clone();
            std::sync::Arc::new(move |line: &str| watch.observe(line))
        };
        let (child, _) =
            crate::supervision::child::spawn_in_group(label, "", argv, env, 0, Some(observer))
                .map_err(|error| ServerError::Spawn {
                    program: program.clone(),
                    error,
                })?;
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(Pid::from_raw);
        tracing::info!(
            process = label,
            pid = pgid.map(|p| p.as_raw_nonzero().get()),
            "started: {}",
            orchestrator_domain::secrets::shown(argv)
        );
        Ok(Self {
            child,
            pgid,
            exited: None,
            watch,
        })
    }

    /// What its output said so far: stages, the last lines, the first
    /// exception.
    pub(crate) fn watch(&self) -> &super::startup::OutputWatch {
        &self.watch
    }

    /// The process id (also its process group).
    pub fn pid(&self) -> Option<i32> {
        self.pgid.map(|p| p.as_raw_nonzero().get())
    }

    /// Resolves when the process exits (cancel-safe; returns at once if it
    /// already has).
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = &self.exited {
            return status.clone();
        }
        let status = match self.child.wait().await {
            Ok(s) => exit_status(s),
            Err(_) => ExitStatus::default(),
        };
        if let Some(pid) = self.pid() {
            crate::supervision::reaper::release(pid);
        }
        self.exited = Some(status.clone());
        status
    }

    /// Stops the process group: SIGTERM (vLLM drains with
    /// `--shutdown-timeout`), SIGKILL after `grace`. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = &self.exited {
            self.kill_group(Signal::KILL);
            return status.clone();
        }
        self.kill_group(Signal::TERM);
        // A stopped process (SIGSTOP, a debugger gone) acts on its SIGTERM
        // only once it runs again.
        self.kill_group(Signal::CONT);
        let status = match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid(),
                    "serving process still running {grace:?} after SIGTERM; sending SIGKILL"
                );
                self.kill_group(Signal::KILL);
                self.wait().await
            }
        };
        // Anything the server left in its group (engine workers) goes too.
        self.kill_group(Signal::KILL);
        status
    }

    /// SIGKILL to the whole group at once (a second stop request).
    pub(crate) fn kill_now(&self) {
        self.kill_group(Signal::KILL);
    }

    fn kill_group(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = kill_process_group(pgid, signal);
        }
    }
}

impl Drop for ServerProcess {
    /// A server is never left behind: if its owner goes away without
    /// stopping it (a cancelled task, an error path), its group is killed.
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.kill_group(Signal::KILL);
        }
    }
}
