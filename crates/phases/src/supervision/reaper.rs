//! Reaping for a PID 1 (or child subreaper): every orphan re-parented to
//! the orchestrator is reaped, so no zombie is ever left — except the
//! children tokio waits for itself, which are registered here while they
//! run and skipped.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn managed() -> &'static Mutex<HashSet<i32>> {
    static MANAGED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    MANAGED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Marks `pid` as a child someone waits for (not to be reaped here).
pub(crate) fn manage(pid: i32) {
    if let Ok(mut set) = managed().lock() {
        set.insert(pid);
    }
}

/// Ends [`manage`] for `pid` (after its waiter reaped it).
pub(crate) fn release(pid: i32) {
    if let Ok(mut set) = managed().lock() {
        set.remove(&pid);
    }
}

/// Zombie children of this process, from `/proc`.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    crate::supervision::procfs::processes()
        .into_iter()
        .filter(|p| p.is_zombie() && p.ppid == me)
        .map(|p| p.pid)
        .collect()
}

/// Reaps every zombie child not managed by a waiter; returns how many.
pub(crate) fn reap_orphans() -> usize {
    let skip: HashSet<i32> = managed().lock().map(|s| s.clone()).unwrap_or_default();
    let mut reaped = 0;
    for pid in zombie_children() {
        if skip.contains(&pid) {
            continue;
        }
        let Some(p) = rustix::process::Pid::from_raw(pid) else {
            continue;
        };
        if let Ok(Some(_)) = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG)
        {
            reaped += 1;
        }
    }
    reaped
}

/// Reaps orphans on every SIGCHLD and every few seconds, for the life of
/// the runtime.
pub(crate) fn spawn_reaper() -> std::io::Result<()> {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // Give tokio's own waiters a moment to collect their children.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = reap_orphans();
            if n > 0 {
                tracing::debug!(reaped = n, "reaped orphaned processes");
            }
        }
    });
    Ok(())
}
