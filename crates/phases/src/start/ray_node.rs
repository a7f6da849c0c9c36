//! A supervised Ray node.
//!
//! `ray start` runs as a child in a process group of its own; the daemons it
//! starts (gcs_server, raylet, ...) stay in that group after it returns. The
//! orchestrator watches the daemons that matter through pidfds (an exit is
//! seen at once, with no polling) and stops the whole group — and only that
//! group — with SIGTERM, then SIGKILL after a grace period. It never runs
//! `ray stop --force`, which would kill every Ray process on the host.

use crate::supervision::Shutdown;
use rustix::process::{Pid, PidfdFlags, Signal, kill_process_group, pidfd_open};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reaps `pid` if it is an exited child of this process; returns how it
/// ended ("exit code 1", "signal 9").
fn reap(pid: i32) -> Option<String> {
    let pid = Pid::from_raw(pid)?;
    match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Some(match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "exited".to_string(),
        }),
        _ => None,
    }
}

/// Reaps the zombies of a process group that are children of this process.
fn reap_group(pgid: i32) {
    for pid in zombie_members(pgid) {
        let _ = reap(pid);
    }
}

/// True when no process of the group runs any more; the group's zombies
/// that are this process's children are reaped (also those that died
/// between the two scans).
fn group_settled(pgid: i32) -> bool {
    reap_group(pgid);
    let empty = group_members(pgid).is_empty();
    reap_group(pgid);
    empty
}

/// Daemons whose exit means the node is down.
const VITAL: &[&str] = &["raylet", "gcs_server"];
/// Lines of `ray start` output kept for error messages.
const TAIL_LINES: usize = 30;

/// What went wrong with a Ray node.
#[derive(Debug, thiserror::Error)]
pub enum RayNodeError {
    /// The program could not be started.
    #[error("cannot run {program}: {error}; set ray.bin (or --ray-bin) to Ray's `ray` executable")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
    /// `ray start` failed. The message leads with the cause (the last
    /// line of its output: Python's exception), then the command and the
    /// output before it.
    #[error(
        "`ray start` failed: {cause} ({status}); command: `{command}`; its last output:\n{tail}"
    )]
    StartFailed {
        /// Ray's own words for what went wrong: its last output line.
        cause: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its last lines of output.
        tail: String,
    },
    /// `ray start` returned but no raylet runs in its process group.
    #[error(
        "`ray start` returned but no raylet is running (process group {pgid}); see Ray's logs in its temp dir"
    )]
    NoRaylet {
        /// The group.
        pgid: i32,
    },
    /// `ray start` did not return in time.
    #[error("`ray start` did not return within {0:?}")]
    Timeout(Duration),
    /// A stop was requested while `ray start` ran: its process group was
    /// stopped.
    #[error("stopped while `ray start` ran")]
    Stopped,
}

/// One daemon of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Its pid.
    pub pid: i32,
    /// Its command name (`raylet`, `gcs_server`, ...).
    pub name: String,
    /// How it ended, once it has and this process could reap it.
    pub status: Option<String>,
}

impl std::fmt::Display for Daemon {
    /// `raylet (pid 42) exited (signal 9)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) exited ({})",
            self.name,
            self.pid,
            self.status.as_deref().unwrap_or("status unknown")
        )
    }
}

/// A running Ray node started by this process.
pub struct RayNode {
    label: String,
    pgid: Pid,
    daemons: Vec<Daemon>,
    exit: tokio::sync::watch::Receiver<Option<Daemon>>,
}

impl std::fmt::Debug for RayNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RayNode")
            .field("label", &self.label)
            .field("pgid", &self.pgid.as_raw_nonzero())
            .field("daemons", &self.daemons)
            .finish()
    }
}

/// The processes of a process group, from `/proc` (zombies left out).
pub fn group_members(pgid: i32) -> Vec<Daemon> {
    scan_group(pgid, false)
        .into_iter()
        .map(|(pid, name)| Daemon {
            pid,
            name,
            status: None,
        })
        .collect()
}

/// The zombies of a process group.
fn zombie_members(pgid: i32) -> Vec<i32> {
    scan_group(pgid, true)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

fn scan_group(pgid: i32, zombies: bool) -> Vec<(i32, String)> {
    crate::supervision::procfs::processes()
        .into_iter()
        .filter(|p| p.pgid == pgid && p.is_zombie() == zombies)
        .map(|p| (p.pid, p.comm))
        .collect()
}

impl RayNode {
    /// Runs `argv` (a `ray start` command) in a new process group with
    /// `env` added, forwards its output to the log under `label`, waits for
    /// it to return, and starts watching the node's daemons.
    pub async fn start(
        label: &str,
        argv: &[String],
        env: &[(String, String)],
        start_timeout: Duration,
        stop: Option<&Shutdown>,
    ) -> Result<Self, RayNodeError> {
        let program = argv.first().cloned().unwrap_or_default();
        let (mut child, tail) =
            crate::supervision::child::spawn_in_group(label, "ray: ", argv, env, TAIL_LINES, None)
                .map_err(|error| RayNodeError::Spawn {
                    program: program.clone(),
                    error,
                })?;
        let raw_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let pgid = Pid::from_raw(raw_pid).ok_or_else(|| RayNodeError::Spawn {
            program: program.clone(),
            error: std::io::Error::other("no pid"),
        })?;
        // A stop request does not wait for `ray start` (which may hang
        // ignoring SIGTERM): its whole group is stopped at once.
        let stop_requested = async {
            match stop {
                Some(s) => s.requested().await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            waited = tokio::time::timeout(start_timeout, child.wait()) => match waited {
                Ok(Ok(status)) => status,
                Ok(Err(error)) => {
                    stop_group(pgid, Duration::from_secs(2), stop).await;
                    return Err(RayNodeError::Spawn { program, error });
                }
                Err(_) => {
                    stop_group(pgid, Duration::from_secs(2), stop).await;
                    return Err(RayNodeError::Timeout(start_timeout));
                }
            },
            () = stop_requested => {
                tracing::info!(node = label, pgid = raw_pid, "stop requested while `ray start` runs: stopping its process group");
                stop_group(pgid, Duration::from_secs(2), stop).await;
                let _ = child.wait().await;
                crate::supervision::reaper::release(raw_pid);
                return Err(RayNodeError::Stopped);
            }
        };
        crate::supervision::reaper::release(raw_pid);
        // Let the output forwarders drain.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !status.success() {
            stop_group(pgid, Duration::from_secs(5), stop).await;
            let lines = tail
                .lock()
                .map(|t| t.iter().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            let cause = cause_of(&lines);
            return Err(RayNodeError::StartFailed {
                cause,
                tail: lines.join("\n"),
                command: crate::start::ray_start::redact(argv).join(" "),
                status: status.to_string(),
            });
        }
        let daemons = group_members(raw_pid);
        let Some(exit) = watch_vital(&daemons) else {
            stop_group(pgid, Duration::from_secs(5), stop).await;
            return Err(RayNodeError::NoRaylet { pgid: raw_pid });
        };
        tracing::info!(
            node = label,
            pgid = raw_pid,
            daemons = %daemons.iter().map(|d| format!("{}:{}", d.name, d.pid)).collect::<Vec<_>>().join(" "),
            "Ray node started"
        );
        Ok(Self {
            label: label.to_string(),
            pgid,
            daemons,
            exit,
        })
    }
}

/// Ray's own words for why `ray start` failed: the last Python exception
/// line of its output (`ValueError: ...`), else its last line.
fn cause_of(lines: &[String]) -> String {
    let is_exception = |line: &str| {
        line.split_once(": ").is_some_and(|(kind, _)| {
            !kind.is_empty()
                && !kind.starts_with(' ')
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                && (kind.ends_with("Error")
                    || kind.ends_with("Exception")
                    || kind.ends_with("Exit"))
        })
    };
    lines
        .iter()
        .rev()
        .find(|l| is_exception(l))
        .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "no output".to_string())
}

/// Watches the vital daemons (raylet, gcs_server) through pidfds; the
/// channel holds the first one to exit. `None` when no raylet could be
/// watched (the node is not up).
fn watch_vital(daemons: &[Daemon]) -> Option<tokio::sync::watch::Receiver<Option<Daemon>>> {
    let (exit_tx, exit) = tokio::sync::watch::channel(None);
    let exit_tx = Arc::new(exit_tx);
    let mut watched_raylet = false;
    for daemon in daemons.iter().filter(|d| VITAL.contains(&d.name.as_str())) {
        let Some(pid) = Pid::from_raw(daemon.pid) else {
            continue;
        };
        // A pidfd turns readable when the process exits, even though it
        // is not our child; a thread sleeps in poll() on it (no CPU).
        let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
            continue;
        };
        watched_raylet |= daemon.name == "raylet";
        // Its exit status is this watcher's to read: the orphan reaper
        // (PID 1, subreaper) leaves it alone until then.
        crate::supervision::reaper::manage(daemon.pid);
        let watched = daemon.pid;
        let daemon = daemon.clone();
        let tx = Arc::clone(&exit_tx);
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{}", daemon.name))
            .spawn(move || {
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                while let Err(rustix::io::Errno::INTR) = rustix::event::poll(&mut fds, None) {}
                let mut daemon = daemon;
                daemon.status = reap(daemon.pid);
                crate::supervision::reaper::release(daemon.pid);
                tx.send_if_modified(|slot| {
                    if slot.is_none() {
                        *slot = Some(daemon);
                        true
                    } else {
                        false
                    }
                });
            });
        if spawned.is_err() {
            crate::supervision::reaper::release(watched);
            watched_raylet = false;
        }
    }
    watched_raylet.then_some(exit)
}

impl RayNode {
    /// The node's label in logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process group of the node's processes.
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// The daemons found when the node started.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// Resolves when a vital daemon (raylet, gcs_server) exits; returns it.
    pub async fn exited(&self) -> Daemon {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone().unwrap_or_else(|| Daemon {
                pid: 0,
                name: "unknown".into(),
                status: None,
            }),
            // Every watcher thread is gone without a report: wait forever.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the node's process group: SIGTERM, then SIGKILL after `grace`
    /// or at once on a forced stop (a second SIGTERM) of `force`.
    /// Returns true when no process of the group is left.
    pub async fn stop(&self, grace: Duration, force: Option<&Shutdown>) -> bool {
        tracing::info!(node = %self.label, pgid = self.pgid(), "stopping Ray node");
        stop_group(self.pgid, grace, force).await
    }
}

/// Stops a Ray process group, vital daemons gracefully:
///
/// 1. SIGTERM to the raylets (they drain and exit in well under a second,
///    and take their agents with them);
/// 2. SIGTERM to the whole group;
/// 3. once no vital daemon (raylet, gcs_server) is left, the helpers
///    (autoscaler monitor, log monitor, dashboard) get one more second —
///    Ray's autoscaler monitor ignores SIGTERM — then SIGKILL;
/// 4. SIGKILL to whatever is left when `grace` runs out, or as soon as
///    `force` says the stop is forced (a second SIGTERM).
///
/// Returns true when no process of the group is left.
pub(crate) async fn stop_group(pgid: Pid, grace: Duration, force: Option<&Shutdown>) -> bool {
    let forced = || force.is_some_and(Shutdown::is_forced);
    let raw = pgid.as_raw_nonzero().get();
    if group_settled(raw) {
        return true;
    }
    let start = Instant::now();
    let deadline = start + grace;
    let vital_alive = |members: &[Daemon]| members.iter().any(|d| VITAL.contains(&d.name.as_str()));

    let raylets: Vec<Pid> = group_members(raw)
        .iter()
        .filter(|d| d.name == "raylet")
        .filter_map(|d| Pid::from_raw(d.pid))
        .collect();
    for pid in &raylets {
        let _ = rustix::process::kill_process(*pid, Signal::TERM);
    }
    let raylet_deadline = start + grace.min(Duration::from_secs(3));
    while Instant::now() < raylet_deadline
        && !forced()
        && group_members(raw).iter().any(|d| d.name == "raylet")
    {
        reap_group(raw);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _ = kill_process_group(pgid, Signal::TERM);
    let mut vitals_gone_at: Option<Instant> = None;
    while Instant::now() < deadline {
        if forced() {
            tracing::warn!(
                pgid = raw,
                "stop forced: sending SIGKILL to Ray's processes"
            );
            break;
        }
        if group_settled(raw) {
            return true;
        }
        let members = group_members(raw);
        if !vital_alive(&members) {
            let since = *vitals_gone_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                tracing::debug!(
                    pgid = raw,
                    left = %members.iter().map(|d| format!("{}:{}", d.name, d.pid)).collect::<Vec<_>>().join(" "),
                    "Ray's daemons stopped; killing its helpers"
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = group_members(raw);
    if vital_alive(&left) && !forced() {
        tracing::warn!(
            pgid = raw,
            left = %left.iter().map(|d| format!("{}:{}", d.name, d.pid)).collect::<Vec<_>>().join(" "),
            "Ray processes still running {grace:?} after SIGTERM; sending SIGKILL"
        );
    }
    let _ = kill_process_group(pgid, Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if group_settled(raw) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::cause_of;

    #[test]
    fn the_exception_line_is_the_cause() {
        let lines: Vec<String> = [
            "Traceback (most recent call last):",
            "  File \"x.py\", line 3, in start",
            "ValueError: Ray component worker_ports is trying to use a port number 6379 that is used by other components.",
            "Port information: {...}",
            "If you allocate ports, please make sure the same port is not used by multiple components.",
        ]
        .map(String::from)
        .to_vec();
        assert!(cause_of(&lines).starts_with("ValueError: Ray component worker_ports"));
        assert_eq!(
            cause_of(&["plain failure".to_string(), String::new()]),
            "plain failure"
        );
        assert_eq!(cause_of(&[]), "no output");
    }
}
