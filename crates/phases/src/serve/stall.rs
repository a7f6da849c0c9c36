//! Stall diagnosis: which rank stayed in a start stage past its deadline
//! ([`overdue`]), and what its processes were doing ([`capture`]: every
//! thread's Python stack of the rank's processes, through py-spy, written
//! to a file; the innermost frames kept for `/status`, the Event and the
//! health policy).
//!
//! A rank ahead of the others waits for them, so only the ranks at the
//! group's lowest stage can be stalled; among them a stopped process
//! (state `T`) is the one to name, else the one that has been there
//! longest.
//!
//! The leader reaches its own server's processes and the Ray workers of
//! its host by pid; a native rank on another node takes its own stacks
//! ([`OwnStacks`], when its own stage passes its deadline) and sends
//! their top frames in its heartbeat ([`RankStacks`]), which the leader's
//! watch waits for ([`REMOTE_WAIT`]).

use orchestrator_domain::secrets::Secrets;
use orchestrator_domain::startup::now_unix_ms;
use orchestrator_domain::{RankStage, ServerStage, StageDeadlines, Stall};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How stalls are found and diagnosed (`[serve.stage-deadlines]`, `[serve]
/// py-spy` and `stacks-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallSpec {
    /// Each stage's deadline.
    pub deadlines: StageDeadlines,
    /// The py-spy program; `None`: the one beside the server's program,
    /// else `py-spy` on the PATH.
    pub py_spy: Option<PathBuf>,
    /// Where the stacks of a stall are written.
    pub stacks_dir: PathBuf,
}

impl Default for StallSpec {
    fn default() -> Self {
        Self {
            deadlines: StageDeadlines::default(),
            py_spy: None,
            stacks_dir: PathBuf::from("/tmp/orchestrator-stacks"),
        }
    }
}

impl StallSpec {
    /// The spec of `[serve]`: its stage deadlines, py-spy and stacks
    /// folder.
    pub fn of(serve: &crate::config::ServeConfig) -> Self {
        Self {
            deadlines: serve.stage_deadlines,
            py_spy: serve.py_spy.clone(),
            stacks_dir: serve.stacks_dir.clone(),
        }
    }

    /// The py-spy to run for a server started as `program`.
    fn py_spy_for(&self, program: &str) -> PathBuf {
        if let Some(path) = &self.py_spy {
            return path.clone();
        }
        let beside = Path::new(program).with_file_name("py-spy");
        if program.contains('/') && beside.is_file() {
            return beside;
        }
        PathBuf::from("py-spy")
    }
}

/// The processes of one start, as far as this orchestrator reaches them.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    /// The server's program (its argv\[0\]).
    pub(crate) program: String,
    /// The rank of the process this orchestrator started.
    pub(crate) own_rank: u32,
    /// Its pid.
    pub(crate) root: Option<u32>,
    /// Ray workers on this host: rank -> pid.
    pub(crate) workers: Vec<(u32, u32)>,
    /// Secret values of the server's argv and environment: py-spy prints
    /// each process's command line, and none of them may reach the file.
    pub(crate) secrets: std::sync::Arc<Vec<String>>,
    /// The other ranks of a native group as their orchestrators last
    /// reported them; `None` without a group.
    pub(crate) reported: Option<Vec<RankDiagnosis>>,
}

impl Reach {
    /// The process to take `rank`'s stacks from, if this host has it.
    fn pid_of(&self, rank: u32) -> Option<u32> {
        self.workers
            .iter()
            .find(|(r, pid)| *r == rank && is_ray_worker(*pid))
            .map(|(_, pid)| *pid)
            .or_else(|| (rank == self.own_rank).then_some(self.root).flatten())
    }

    /// Whether `rank`'s serving process is stopped, seen here or reported
    /// by its orchestrator.
    fn stopped(&self, rank: u32) -> bool {
        self.pid_of(rank).is_some_and(is_stopped)
            || self
                .reported
                .iter()
                .flatten()
                .any(|d| d.rank == rank && d.stopped)
    }

    /// The stacks `rank`'s orchestrator took in the stage it entered at
    /// `since_unix_ms`.
    fn stacks_of(&self, rank: u32, since_unix_ms: u64) -> Option<&RankStacks> {
        self.reported
            .iter()
            .flatten()
            .filter(|d| d.rank == rank)
            .find_map(|d| d.stacks.as_ref())
            .filter(|s| s.since_unix_ms == since_unix_ms)
    }
}

/// What a rank's own orchestrator says of its serving process, for a
/// stall's diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RankDiagnosis {
    /// The rank.
    pub rank: u32,
    /// Its serving process is stopped (state `T`).
    pub stopped: bool,
    /// The stacks it took once its stage passed its deadline.
    pub stacks: Option<RankStacks>,
}

/// A rank's stacks as its own orchestrator took them: sent to the leader
/// in its heartbeat (the whole dump stays in a file on the rank's node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RankStacks {
    /// The stage the rank was stalled in.
    pub stage: ServerStage,
    /// Since when, ms since the Unix epoch (which start of the stage).
    pub since_unix_ms: u64,
    /// The innermost frames of its busiest main thread.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_frames: Vec<String>,
    /// The file with every process's stacks, on the rank's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Why there are no stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RankStacks {
    /// As the leader keeps them from a peer: at most
    /// [`Stall::TOP_FRAMES`] frames, every text one bounded line.
    pub(crate) fn bounded(self) -> Self {
        use orchestrator_domain::startup::shown_line;
        Self {
            top_frames: self
                .top_frames
                .iter()
                .take(Stall::TOP_FRAMES)
                .map(|f| shown_line(f))
                .collect(),
            file: self.file.as_deref().map(shown_line),
            error: self.error.as_deref().map(shown_line),
            ..self
        }
    }
}

/// How long the leader waits for a rank on another node to send the
/// stacks it takes of itself before it reports the stall without them.
pub(crate) const REMOTE_WAIT: Duration = Duration::from_secs(30);

/// A native rank's stacks, taken when the leader asks (it found the rank
/// stalled): once per stage start, kept here for the heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct OwnStacks {
    spec: StallSpec,
    /// The stage start whose stacks were taken (or are being taken).
    taken_for: Option<u64>,
    slot: Arc<Mutex<Option<RankStacks>>>,
}

impl OwnStacks {
    pub(crate) fn new(spec: StallSpec) -> Self {
        Self {
            spec,
            taken_for: None,
            slot: Arc::default(),
        }
    }

    /// The stacks taken, if any.
    pub(crate) fn latest(&self) -> Option<RankStacks> {
        match self.slot.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The leader wants the stacks of this rank's server (`program`, its
    /// output `watch`, its pid `root`) stalled in the stage it entered at
    /// `since_unix_ms`: taken in a task of their own, once, if the server
    /// is still in that stage.
    pub(crate) fn take(
        &mut self,
        program: &str,
        watch: &super::startup::OutputWatch,
        root: Option<u32>,
        since_unix_ms: u64,
        deadline: u64,
    ) {
        if self.taken_for == Some(since_unix_ms) {
            return;
        }
        let Some(rank) = watch
            .stages()
            .into_iter()
            .find(|s| s.rank == watch.own_rank() && s.since_unix_ms == since_unix_ms)
        else {
            return;
        };
        self.taken_for = Some(since_unix_ms);
        tracing::warn!(
            rank = rank.rank,
            stage = rank.stage.name(),
            "the leader found this rank's server {} past its deadline ({} s): taking its stacks",
            rank.stage.doing(),
            deadline / 1000
        );
        let py_spy = self.spec.py_spy_for(program);
        let dir = self.spec.stacks_dir.clone();
        let secrets = watch.secrets();
        let slot = Arc::clone(&self.slot);
        tokio::spawn(async move {
            let stacks = match root {
                Some(pid) => capture(&py_spy, pid, &secrets).await,
                None => Err("this rank's serving process has no pid".to_string()),
            };
            let stall = stall_of(
                &rank,
                deadline,
                now_unix_ms(),
                stacks.as_ref().map_err(String::as_str),
            );
            let (file, error) = match &stacks {
                Ok(s) => match keep(&dir, &stall, &s.text) {
                    Ok(path) => (Some(path.display().to_string()), None),
                    Err(e) => (None, Some(e)),
                },
                Err(e) => (None, Some(e.clone())),
            };
            let taken = RankStacks {
                stage: rank.stage,
                since_unix_ms: rank.since_unix_ms,
                top_frames: stall.top_frames,
                file,
                error,
            };
            match slot.lock() {
                Ok(mut g) => *g = Some(taken),
                Err(p) => *p.into_inner() = Some(taken),
            }
        });
    }
}

/// Whether `pid` is a Ray worker process of this host (its title starts
/// `ray::`), not a process of another pid namespace's number.
fn is_ray_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"ray::"))
}

/// Finds at most one stall per start and diagnoses it in a task of its
/// own; the result arrives on the receiver [`StallWatch::new`] returned,
/// with the start's number.
#[derive(Debug)]
pub(crate) struct StallWatch {
    spec: StallSpec,
    tx: mpsc::UnboundedSender<(u32, Stall)>,
    /// The start the watch is on, and how far its stall's search came.
    start: u32,
    search: Search,
}

/// How far a start's stall search came.
#[derive(Debug, Clone)]
enum Search {
    /// No rank is overdue yet.
    Looking,
    /// A rank on another node is overdue; its own orchestrator's stacks
    /// are awaited (since `asked`).
    Awaiting {
        rank: RankStage,
        deadline: u64,
        asked: Instant,
    },
    /// The stall was found (and is being or was diagnosed).
    Found,
}

impl StallWatch {
    /// The watch and where its diagnoses arrive.
    pub(crate) fn new(spec: StallSpec) -> (Self, mpsc::UnboundedReceiver<(u32, Stall)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = Self {
            spec,
            tx,
            start: 0,
            search: Search::Looking,
        };
        (watch, rx)
    }

    /// A new start (`start` counts them): its stall is yet to be found.
    pub(crate) fn restart(&mut self, start: u32) {
        self.start = start;
        self.search = Search::Looking;
    }

    /// Whether a diagnosis is for the current start.
    pub(crate) fn current(&self, start: u32) -> bool {
        start == self.start
    }

    /// Looks at the ranks' stages; the first time one is overdue, takes
    /// its stacks in a task and sends the stall.
    ///
    /// A rank out of reach in a native group is asked for its own stacks:
    /// the rank, its stage's start and deadline are returned for the
    /// group to ask (again at every call while awaited).
    pub(crate) fn check(&mut self, stages: &[RankStage], reach: &Reach) -> Option<(u32, u64, u64)> {
        match &self.search {
            Search::Found => return None,
            Search::Awaiting {
                rank,
                deadline,
                asked,
            } => {
                let stacks = reach.stacks_of(rank.rank, rank.since_unix_ms);
                if stacks.is_some() || asked.elapsed() >= REMOTE_WAIT {
                    let stall = remote_stall(rank, *deadline, stacks);
                    let _ = self.tx.send((self.start, stall));
                    self.search = Search::Found;
                    return None;
                }
                return Some((rank.rank, rank.since_unix_ms, *deadline));
            }
            Search::Looking => {}
        }
        let now = now_unix_ms();
        let (rank, deadline) = overdue(stages, &self.spec.deadlines, now, |r| reach.stopped(r))?;
        self.search = Search::Found;
        let target = reach.pid_of(rank.rank);
        if target.is_none() && reach.reported.is_some() {
            tracing::warn!(
                rank = rank.rank,
                stage = rank.stage.name(),
                "rank {}'s server on {} has been {} past its deadline ({} s): asking its orchestrator for its stacks",
                rank.rank,
                rank.node,
                rank.stage.doing(),
                deadline / 1000
            );
            self.search = Search::Awaiting {
                rank,
                deadline,
                asked: Instant::now(),
            };
            return self.check(stages, reach);
        }
        let py_spy = self.spec.py_spy_for(&reach.program);
        let dir = self.spec.stacks_dir.clone();
        let secrets = std::sync::Arc::clone(&reach.secrets);
        let (tx, start) = (self.tx.clone(), self.start);
        tracing::warn!(
            rank = rank.rank,
            stage = rank.stage.name(),
            "rank {}'s server has been {} past its deadline ({} s): taking its stacks",
            rank.rank,
            rank.stage.doing(),
            deadline / 1000
        );
        tokio::spawn(async move {
            let stacks = match target {
                Some(pid) => capture(&py_spy, pid, &secrets).await,
                None => Err(format!(
                    "rank {}'s processes run on {}, out of this orchestrator's reach",
                    rank.rank,
                    if rank.node.is_empty() {
                        "another node"
                    } else {
                        &rank.node
                    }
                )),
            };
            let mut stall = stall_of(
                &rank,
                deadline,
                now_unix_ms(),
                stacks.as_ref().map_err(String::as_str),
            );
            if let Ok(stacks) = &stacks {
                match keep(&dir, &stall, &stacks.text) {
                    Ok(path) => stall.stacks_file = Some(path.display().to_string()),
                    Err(e) => stall.stacks_error = Some(e),
                }
            }
            let _ = tx.send((start, stall));
        });
        None
    }
}

/// The stall of `rank` on another node with the stacks its orchestrator
/// sent (none within [`REMOTE_WAIT`]: the stall without them).
fn remote_stall(rank: &RankStage, deadline: u64, stacks: Option<&RankStacks>) -> Stall {
    let now = now_unix_ms();
    let Some(stacks) = stacks else {
        let why = format!(
            "rank {}'s orchestrator on {} sent no stacks within {} s",
            rank.rank,
            rank.node,
            REMOTE_WAIT.as_secs()
        );
        return stall_of(rank, deadline, now, Err(&why));
    };
    let taken = Stacks {
        text: String::new(),
        top_frames: stacks.top_frames.clone(),
    };
    let mut stall = match &stacks.error {
        Some(e) => stall_of(rank, deadline, now, Err(e)),
        None => stall_of(rank, deadline, now, Ok(&taken)),
    };
    stall.stacks_file.clone_from(&stacks.file);
    stall
}

/// The most bytes of py-spy's output read for one process tree.
const DUMP_BYTES: usize = 512 * 1024;
/// The most bytes of py-spy's error output read.
const ERROR_BYTES: usize = 4096;
/// How long one py-spy run may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(20);

/// The rank that is stalled at `now_ms`, with its stage's deadline (ms),
/// if any; `stopped` says whether a rank's process is stopped.
pub(crate) fn overdue(
    stages: &[RankStage],
    deadlines: &StageDeadlines,
    now_ms: u64,
    stopped: impl Fn(u32) -> bool,
) -> Option<(RankStage, u64)> {
    let lowest = stages.iter().map(|s| s.stage).min()?;
    let deadline = deadlines.of(lowest)?;
    let behind: Vec<&RankStage> = stages.iter().filter(|s| s.stage == lowest).collect();
    let oldest = behind.iter().map(|s| s.since_unix_ms).min()?;
    if now_ms.saturating_sub(oldest) <= deadline {
        return None;
    }
    let named = behind
        .iter()
        .find(|s| stopped(s.rank))
        .or_else(|| behind.iter().min_by_key(|s| (s.since_unix_ms, s.rank)))?;
    Some(((*named).clone(), deadline))
}

/// Whether process `pid` is stopped (`T`, or `t`: traced), from
/// `/proc/PID/stat`.
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command (field 2) is in parentheses and may hold spaces.
            let after = stat.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|s| s == "T" || s == "t")
        })
        .unwrap_or(false)
}

/// One rank's processes as py-spy saw them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Stacks {
    /// py-spy's output, cut at [`DUMP_BYTES`].
    pub(crate) text: String,
    /// The innermost frames of the busiest main thread (the deepest
    /// stack), innermost first.
    pub(crate) top_frames: Vec<String>,
}

/// Takes the Python stacks of `pid` and its children with `py_spy`,
/// reading at most [`DUMP_BYTES`] within [`DUMP_TIMEOUT`]; `secrets`
/// are redacted from what is kept.
pub(crate) async fn capture(py_spy: &Path, pid: u32, secrets: &[String]) -> Result<Stacks, String> {
    let mut command = tokio::process::Command::new(py_spy);
    command.args(["dump", "--subprocesses"]);
    // A stopped process is not running: its memory is read as it is,
    // without the pause (ptrace) py-spy would otherwise wait on.
    if is_stopped(pid) {
        command.arg("--nonblocking");
    }
    command
        .arg("--pid")
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        format!(
            "cannot run {} ({e}): install py-spy (python/requirements-stacks.txt) or set [serve] py-spy",
            py_spy.display()
        )
    })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (out, err) = tokio::join!(
            crate::supervision::read_at_most(stdout, DUMP_BYTES),
            crate::supervision::read_at_most(stderr, ERROR_BYTES)
        );
        (out, err, child.wait().await)
    };
    // On the timeout the child is dropped, and killed with it.
    let (out, err, status) = tokio::time::timeout(DUMP_TIMEOUT, run)
        .await
        .map_err(|_| format!("py-spy took over {} s", DUMP_TIMEOUT.as_secs()))?;
    let (mut text, cut) = out;
    let succeeded = status.is_ok_and(|s| s.success());
    if !succeeded && text.trim().is_empty() {
        let err = orchestrator_domain::startup::shown_line(err.0.trim());
        return Err(format!(
            "py-spy failed for pid {pid}: {}",
            Secrets::redact_values(&err, secrets)
        ));
    }
    if cut {
        text.push_str("\n[cut]\n");
    }
    let text = Secrets::redact_values(&text, secrets);
    let top_frames = top_frames(&text);
    Ok(Stacks { text, top_frames })
}

/// The frames of the deepest main-thread stack in a py-spy dump
/// (`Thread N (state): "MainThread"` followed by indented frames,
/// innermost first), at most [`Stall::TOP_FRAMES`].
pub(crate) fn top_frames(dump: &str) -> Vec<String> {
    let mut best: Vec<String> = vec![];
    let mut current: Option<Vec<String>> = None;
    let finish = |frames: Option<Vec<String>>, best: &mut Vec<String>| {
        if let Some(frames) = frames
            && frames.len() > best.len()
        {
            *best = frames;
        }
    };
    for line in dump.lines() {
        if line.starts_with("Thread ") {
            finish(current.take(), &mut best);
            if line.ends_with("\"MainThread\"") {
                current = Some(vec![]);
            }
        } else if let Some(frames) = current.as_mut() {
            match line.strip_prefix("    ") {
                Some(frame) if !frame.starts_with(' ') => {
                    frames.push(orchestrator_domain::startup::shown_line(frame.trim()));
                }
                Some(_) => {} // locals (`--locals`), not asked for
                None => finish(current.take(), &mut best),
            }
        }
    }
    finish(current, &mut best);
    best.truncate(Stall::TOP_FRAMES);
    best
}

/// Writes a stall's stacks to `dir/stall-rank<R>-<unix ms>.txt` (the
/// folder made when missing, readable by its owner only).
pub(crate) fn keep(dir: &Path, stall: &Stall, text: &str) -> Result<PathBuf, String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let path = dir.join(format!("stall-rank{}-{}.txt", stall.rank, stall.at_unix_ms));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let header = format!("# {}\n\n", stall.summary());
    file.write_all(header.as_bytes())
        .and_then(|()| file.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The stall of `rank` (in `stage` for `stalled_ms`) with what a capture
/// gave.
pub(crate) fn stall_of(
    rank: &RankStage,
    deadline_ms: u64,
    now_ms: u64,
    stacks: Result<&Stacks, &str>,
) -> Stall {
    let (top_frames, stacks_error) = match stacks {
        Ok(s) => (s.top_frames.clone(), None),
        Err(e) => (vec![], Some(e.to_string())),
    };
    Stall {
        rank: rank.rank,
        node: rank.node.clone(),
        stage: rank.stage,
        stalled_ms: now_ms.saturating_sub(rank.since_unix_ms),
        deadline_ms,
        top_frames,
        stacks_file: None,
        stacks_error,
        at_unix_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_domain::ServerStage;

    fn at(rank: u32, stage: ServerStage, since: u64) -> RankStage {
        RankStage {
            rank,
            node: format!("10.0.0.{rank}"),
            stage,
            since_unix_ms: since,
            pid: None,
        }
    }

    fn deadlines() -> StageDeadlines {
        StageDeadlines {
            distributed_init: 60,
            ..StageDeadlines::default()
        }
    }

    #[test]
    fn only_the_lowest_stage_can_stall_and_a_stopped_rank_is_named() {
        let stages = [
            at(0, ServerStage::WeightsLoaded, 1_000),
            at(1, ServerStage::DistributedInit, 5_000),
            at(2, ServerStage::DistributedInit, 2_000),
        ];
        // Within the deadline: nothing.
        assert_eq!(overdue(&stages, &deadlines(), 61_000, |_| false), None);
        // Past it: the longest there, unless another is stopped.
        let (rank, deadline) = overdue(&stages, &deadlines(), 62_001, |_| false).unwrap();
        assert_eq!((rank.rank, deadline), (2, 60_000));
        let (rank, _) = overdue(&stages, &deadlines(), 62_001, |r| r == 1).unwrap();
        assert_eq!(rank.rank, 1);
        // Rank 0 ahead of the others is never the stalled one.
        let (rank, _) = overdue(&stages, &deadlines(), 10_000_000, |r| r == 0).unwrap();
        assert_ne!(rank.rank, 0);
        // Serving: no deadline.
        let serving = [at(0, ServerStage::WarmedUp, 0)];
        assert_eq!(overdue(&serving, &deadlines(), u64::MAX, |_| true), None);
    }

    #[test]
    fn the_deepest_main_thread_gives_the_top_frames() {
        let dump = "Process 10: vllm serve /m\nPython v3.12.1 (/usr/bin/python3)\n\n\
            Thread 10 (idle): \"MainThread\"\n    select (selectors.py:468)\n    run (asyncio.py:10)\n\n\
            Thread 11 (idle): \"Thread-1\"\n    wait (threading.py:1)\n    a (x.py:1)\n    b (x.py:2)\n    c (x.py:3)\n\n\
            Process 12: VLLM::EngineCore\nPython v3.12.1 (/usr/bin/python3)\n\n\
            Thread 12 (active): \"MainThread\"\n    load_weights (loader.py:12)\n    load_model (gpu_worker.py:80)\n    __init__ (core.py:20)\n";
        assert_eq!(
            top_frames(dump),
            vec![
                "load_weights (loader.py:12)",
                "load_model (gpu_worker.py:80)",
                "__init__ (core.py:20)"
            ]
        );
        assert!(top_frames("nothing useful").is_empty());
    }

    #[test]
    fn a_stall_is_kept_in_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let stacks = Stacks {
            text: "Thread 1 (idle): \"MainThread\"\n    f (a.py:1)\n".into(),
            top_frames: vec!["f (a.py:1)".into()],
        };
        let rank = at(1, ServerStage::DistributedInit, 1_000);
        let stall = stall_of(&rank, 60_000, 62_000, Ok(&stacks));
        assert_eq!(stall.stalled_ms, 61_000);
        let path = keep(&dir.path().join("stacks"), &stall, &stacks.text).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("rank 1's server on 10.0.0.1 has been loading weights for 61 s"));
        assert!(text.contains("f (a.py:1)"));
        let failed = stall_of(&rank, 60_000, 62_000, Err("py-spy missing"));
        assert!(
            failed.summary().contains("no stacks: py-spy missing"),
            "{}",
            failed.summary()
        );
    }

    #[test]
    fn a_stopped_process_is_seen_as_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!is_stopped(pid));
        let raw = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(raw, rustix::process::Signal::STOP).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_stopped(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(is_stopped(pid));
        let _ = child.kill();
        let _ = child.wait();
    }
}
