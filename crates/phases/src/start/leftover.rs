//! What a previous orchestrator left running. On a bare machine (no pod to
//! take its processes with it) an orchestrator killed with SIGKILL leaves
//! its Ray node running unsupervised, and the next `ray start --head` fails
//! with Ray's "already running". Each orchestrator therefore records the
//! node it started (its own pid and start time, the node's process group,
//! its daemons' pids and start times, Ray's session directory) in a small
//! file; the next one on the same node reads it first and, when the
//! recording orchestrator is gone, stops what is left of that node — by
//! pid, through the kill system call, never with `ray stop` (which would
//! stop every Ray node of the machine). Entry point: [`NodeRecord`].

use crate::supervision::procfs;
use rustix::process::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One process, named across pid reuse by its start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessId {
    /// Its pid.
    pub pid: i32,
    /// Clock ticks since boot when it started.
    pub(crate) start_time: u64,
}

impl ProcessId {
    /// `pid` as it is now, if it runs.
    pub(crate) fn of(pid: i32) -> Option<Self> {
        procfs::start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether this very process still runs (not another with its pid).
    pub(crate) fn is_running(&self) -> bool {
        procfs::start_time(self.pid) == Some(self.start_time)
    }
}

/// The record of a Ray node an orchestrator started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// The orchestrator that started it.
    pub orchestrator: ProcessId,
    /// The node's process group.
    pub pgid: i32,
    /// Its daemons when it started (`raylet`, `gcs_server`, ...).
    pub daemons: Vec<(String, ProcessId)>,
    /// Ray's session directory, when it could be read.
    pub(crate) session_dir: Option<PathBuf>,
}

/// What [`NodeRecord::clear_leftover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leftover {
    /// No record, or nothing of the recorded node runs.
    Nothing,
    /// The recording orchestrator still runs: its node is not ours to stop.
    Supervised {
        /// That orchestrator's pid.
        orchestrator: i32,
    },
    /// The recorded node ran unsupervised and was stopped.
    Stopped {
        /// The pids that were left.
        pids: Vec<i32>,
        /// Whether every one of them is gone now.
        all_gone: bool,
    },
}

impl NodeRecord {
    /// The record of the node whose process group is `pgid`, started by
    /// this process, with Ray's temp dir `temp_dir` (its `session_latest`
    /// names the session).
    pub(crate) fn of_node(pgid: i32, daemons: &[super::Daemon], temp_dir: &Path) -> Option<Self> {
        Some(Self {
            orchestrator: ProcessId::of(std::process::id() as i32)?,
            pgid,
            daemons: daemons
                .iter()
                .filter_map(|d| ProcessId::of(d.pid).map(|p| (d.name.clone(), p)))
                .collect(),
            session_dir: std::fs::canonicalize(temp_dir.join("session_latest")).ok(),
        })
    }

    /// Writes the record to `path` (atomically: a temp file renamed).
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, json)?;
        std::fs::rename(&partial, path)
    }

    /// The record at `path`; `None` when there is none or it is not one
    /// (a record that cannot be read is ignored with a warning, never
    /// acted on).
    pub(crate) fn read(path: &Path) -> Option<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(record = %path.display(), "cannot read the previous node record: {e}");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(record = %path.display(), "ignoring a node record that is not one: {e}");
                None
            }
        }
    }

    /// The processes of the recorded node that still run: members of its
    /// process group, provided the group is provably the recorded one (a
    /// recorded daemon still runs in it, or a member's command line names
    /// the recorded session directory).
    pub(crate) fn survivors(&self) -> Vec<i32> {
        let members: Vec<procfs::ProcEntry> = procfs::processes()
            .into_iter()
            .filter(|p| p.pgid == self.pgid && !p.is_zombie())
            .collect();
        let daemon_runs = self
            .daemons
            .iter()
            .any(|(_, d)| d.is_running() && members.iter().any(|m| m.pid == d.pid));
        let session_named = self.session_dir.as_ref().is_some_and(|dir| {
            let dir = dir.to_string_lossy();
            members
                .iter()
                .any(|m| procfs::cmdline(m.pid).contains(dir.as_ref()))
        });
        if daemon_runs || session_named {
            members.iter().map(|m| m.pid).collect()
        } else {
            vec![]
        }
    }

    /// Reads the record at `path` and stops what is left of its node when
    /// the orchestrator that recorded it is gone (SIGTERM, SIGKILL after
    /// `grace`). The record is removed once nothing of it runs.
    pub(crate) async fn clear_leftover(path: &Path, grace: Duration) -> Leftover {
        let Some(record) = Self::read(path) else {
            return Leftover::Nothing;
        };
        if record.orchestrator.is_running() && record.orchestrator.pid != std::process::id() as i32
        {
            return Leftover::Supervised {
                orchestrator: record.orchestrator.pid,
            };
        }
        let pids = record.survivors();
        if pids.is_empty() {
            let _ = std::fs::remove_file(path);
            return Leftover::Nothing;
        }
        tracing::warn!(
            pgid = record.pgid,
            session = %record.session_dir.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            pids = ?pids,
            "a previous orchestrator (pid {}) is gone and left its Ray node running: stopping it",
            record.orchestrator.pid
        );
        let all_gone = match Pid::from_raw(record.pgid) {
            Some(pgid) => super::ray_node::stop_group(pgid, grace, None).await,
            None => false,
        };
        if all_gone {
            let _ = std::fs::remove_file(path);
        }
        Leftover::Stopped { pids, all_gone }
    }
}

/// Removes Ray's `ray_current_cluster` hint from `temp_dir` when it names
/// `gcs_address` and nothing accepts connections there. `ray start --head`
/// refuses to start ("already running") when that file names its own
/// address and any local raylet still refers to it — on a machine that
/// also runs a worker of the cluster whose head died, the worker's raylet
/// does. With the GCS port closed, nothing runs there: the hint is stale.
/// Returns true when it was removed.
pub(crate) fn clear_stale_cluster_address(temp_dir: &Path, gcs_address: &str) -> bool {
    let file = temp_dir.join("ray_current_cluster");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return false;
    };
    if text.trim() != gcs_address {
        return false;
    }
    let refused = gcs_address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        });
    if refused && std::fs::remove_file(&file).is_ok() {
        tracing::info!(
            file = %file.display(),
            "removed Ray's stale cluster address {gcs_address}: nothing listens there"
        );
        return true;
    }
    false
}

/// Where the node record of `role` at `node` (an IP address or `default`)
/// with GCS port `port` lives: Ray's temp dir, which the node's session
/// lives in too.
pub(crate) fn record_path(temp_dir: &Path, role: &str, node: &str, port: u16) -> PathBuf {
    temp_dir.join(format!("orchestrator-{role}-{node}-{port}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_address_hint_is_removed_only_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ray_current_cluster");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap().to_string();
        std::fs::write(&file, format!("{live}\n")).unwrap();
        assert!(
            !clear_stale_cluster_address(dir.path(), &live),
            "a GCS listens"
        );
        assert!(
            !clear_stale_cluster_address(dir.path(), "127.0.0.1:1"),
            "another address"
        );
        drop(listener);
        assert!(clear_stale_cluster_address(dir.path(), &live));
        assert!(!file.exists());
    }

    #[test]
    fn a_record_of_a_running_orchestrator_is_left_alone_and_a_garbage_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path(), "head", "127.0.0.1", 6379);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(NodeRecord::clear_leftover(&path, Duration::from_secs(1))),
            Leftover::Nothing
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(
            rt.block_on(NodeRecord::clear_leftover(&path, Duration::from_secs(1))),
            Leftover::Nothing
        );
        // Recorded by a process that still runs (this test's parent):
        // not ours to stop.
        let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
        let parent = parent.unwrap();
        let record = NodeRecord {
            orchestrator: ProcessId::of(parent).unwrap(),
            pgid: parent,
            daemons: vec![],
            session_dir: None,
        };
        record.write(&path).unwrap();
        assert_eq!(NodeRecord::read(&path), Some(record));
        assert_eq!(
            rt.block_on(NodeRecord::clear_leftover(&path, Duration::from_secs(1))),
            Leftover::Supervised {
                orchestrator: parent
            }
        );
    }

    #[test]
    fn a_group_is_stopped_only_when_it_is_provably_the_recorded_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path(), "head", "127.0.0.1", 6379);
        // A stand-in node: a process group whose leader is recorded as a
        // daemon, by an orchestrator that is gone (a child that finished).
        let session = dir.path().join("session_2026-11-27_10-00-00_000000_1");
        let mut node = std::process::Command::new("sleep");
        node.arg("600");
        std::os::unix::process::CommandExt::process_group(&mut node, 0);
        let node = node.spawn().unwrap();
        let pgid = node.id() as i32;
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_id = ProcessId::of(gone.id() as i32).unwrap();
        gone.wait().unwrap();
        let stranger = NodeRecord {
            orchestrator: gone_id,
            pgid,
            daemons: vec![],
            session_dir: Some(session),
        };
        assert!(
            stranger.survivors().is_empty(),
            "neither a recorded daemon nor the session dir: not provably ours"
        );
        let record = NodeRecord {
            daemons: vec![("sleep".into(), ProcessId::of(pgid).unwrap())],
            ..stranger
        };
        assert_eq!(record.survivors(), vec![pgid]);
        record.write(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(NodeRecord::clear_leftover(&path, Duration::from_secs(2)));
        assert_eq!(
            outcome,
            Leftover::Stopped {
                pids: vec![pgid],
                all_gone: true
            }
        );
        drop(node);
        assert!(!path.exists(), "the record is removed once nothing runs");
    }
}
