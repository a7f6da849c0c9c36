//! A serving process's start read from its own output: every line goes
//! through [`OutputWatch::observe`], which moves each rank to the
//! [`ServerStage`] its server announces, keeps the last lines and the
//! first exception line, and, when the process exits before it served,
//! makes the [`StartupFailure`] that says what failed, where and why.
//!
//! Lines are vLLM's (0.3x): `world_size=W rank=R` (the distributed
//! group), `Loading weights took`, `KV cache size`, `Starting vLLM
//! server`, `Application startup complete`. Behind Ray, a worker's lines
//! come through the driver prefixed `(RayWorkerProc pid=P, ip=A)`: the
//! pid's rank is learned from its `world_size=` line. Entry point:
//! [`OutputWatch`].

use orchestrator_domain::secrets::Secrets;
use orchestrator_domain::startup::now_unix_ms;
use orchestrator_domain::startup::{FAILURE_LINES, shown_line};
use orchestrator_domain::{ExitStatus, RankStage, ServerStage, StartupFailure};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The stage a line announces, if any.
fn stage_of(text: &str) -> Option<ServerStage> {
    const MARKS: &[(&str, ServerStage)] = &[
        ("non-default args:", ServerStage::ImportsDone),
        ("vLLM API server version", ServerStage::ImportsDone),
        ("distributed_init_method=", ServerStage::DistributedInit),
        ("Loading weights took", ServerStage::WeightsLoaded),
        ("Model loading took", ServerStage::WeightsLoaded),
        ("KV cache size:", ServerStage::KvCacheAllocated),
        (
            "init engine (profile, create kv cache",
            ServerStage::KvCacheAllocated,
        ),
        ("Starting vLLM server on", ServerStage::ApiUp),
        ("Starting vLLM API server", ServerStage::ApiUp),
        ("Application startup complete", ServerStage::ApiUp),
    ];
    MARKS
        .iter()
        .find(|(mark, _)| text.contains(mark))
        .map(|(_, stage)| *stage)
}

/// `(RayWorkerProc pid=P[, ip=A])` at the start of a line: P and A.
fn ray_worker_prefix(text: &str) -> Option<(u32, Option<String>)> {
    let rest = text.strip_prefix('(')?;
    let (inside, _) = rest.split_once(')')?;
    let first = inside.split([',', ' ']).next().unwrap_or_default();
    // vLLM's own prefixes (`(APIServer pid=P)`, `(Worker_TP1 pid=P)`) are
    // not Ray's: Ray names its worker actor, or only the pid before that.
    if !(first == "RayWorkerProc" || first.starts_with("pid=") || inside.contains("ip=")) {
        return None;
    }
    let mut pid = None;
    let mut ip = None;
    for field in inside.split([',', ' ']) {
        if let Some(p) = field.strip_prefix("pid=") {
            pid = p.parse().ok();
        } else if let Some(a) = field.strip_prefix("ip=") {
            ip = Some(a.to_string());
        }
    }
    Some((pid?, ip))
}

/// `world_size=W rank=R`: R.
fn world_rank(text: &str) -> Option<u32> {
    let at = text.find("world_size=")?;
    text[at..]
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rank="))
        .and_then(|r| r.parse().ok())
}

/// The line without its leading `(...)` prefixes (process names, Ray's
/// worker prefix).
fn without_prefixes(text: &str) -> &str {
    let mut rest = text.trim_start();
    while rest.starts_with('(') {
        match rest.find(')') {
            Some(end) => rest = rest[end + 1..].trim_start(),
            None => break,
        }
    }
    rest
}

/// vLLM's logger header (`ERROR 12-06 07:46:33 [core.py:1234] `) split
/// off the message; `None` for other lines.
fn logger_header(rest: &str) -> Option<(&str, &str)> {
    let leveled = ["DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL "]
        .iter()
        .any(|level| rest.starts_with(level));
    rest.split_once("] ").filter(|_| leveled)
}

/// The line without its prefixes and the log level and time vLLM's logger
/// puts first.
fn message_of(text: &str) -> &str {
    let rest = without_prefixes(text);
    logger_header(rest).map_or(rest, |(_, message)| message)
}

/// Whether the line is one of vLLM's logger
/// (`INFO 12-06 07:46:17 [api_utils.py:286] ...`, after any prefixes).
fn logged_by_vllm(line: &str) -> bool {
    logger_header(without_prefixes(line))
        .and_then(|(head, _)| head.split_once('['))
        .is_some_and(|(_, at)| at.contains(".py:"))
}

/// A Python exception line: `Name: message` or `Name` where Name is a
/// dotted identifier ending in Error, Exception or Exit (or
/// `KeyboardInterrupt`), optionally `Wrapper(Name)`.
fn exception_of(message: &str) -> Option<&str> {
    let head_end = message.find(": ").unwrap_or(message.len());
    let head = &message[..head_end];
    let name = head.split('(').next().unwrap_or(head);
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let last = name.rsplit('.').next().unwrap_or(name);
    let kind = ["Error", "Exception", "Exit"]
        .iter()
        .any(|suffix| last.ends_with(suffix))
        || last == "KeyboardInterrupt";
    (is_name && kind && !head.contains(' ')).then_some(message.trim_end())
}

/// What the watch has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Each rank's stage and when it got there.
    ranks: BTreeMap<u32, (ServerStage, u64, String)>,
    /// Ray worker pid -> rank (from its `world_size=` line).
    pid_ranks: HashMap<u32, u32>,
    /// Ray worker pid -> its node's address.
    pid_nodes: HashMap<u32, String>,
    /// The last lines, shown and redacted.
    tail: VecDeque<String>,
    /// The first exception line and the rank it came from.
    exception: Option<(String, u32)>,
    /// The last lines up to and with the first exception: its context
    /// (what follows is often a second exception caused by it).
    cause: Vec<String>,
}

/// Reads one serving process's output (see the module's doc). Cloning
/// shares it.
#[derive(Clone)]
pub(crate) struct OutputWatch {
    own_rank: u32,
    own_node: String,
    secrets: Arc<Vec<String>>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for OutputWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWatch")
            .field("own_rank", &self.own_rank)
            .field("own_node", &self.own_node)
            .finish_non_exhaustive()
    }
}

impl OutputWatch {
    /// The watch of the server of `rank` on `node`, started with `argv`
    /// and `env` (whose secret values are redacted from every kept line).
    pub(crate) fn new(rank: u32, node: &str, argv: &[String], env: &[(String, String)]) -> Self {
        let watch = Self {
            own_rank: rank,
            own_node: node.to_string(),
            secrets: Arc::new(orchestrator_domain::secrets::secrets().values_in(argv, env)),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        watch.reach(rank, node.to_string(), ServerStage::ProcessUp);
        watch
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Moves `rank` to `stage` (never back).
    pub(crate) fn reach(&self, rank: u32, node: String, stage: ServerStage) {
        let mut seen = self.seen();
        match seen.ranks.get(&rank) {
            Some((had, _, _)) if *had >= stage => {}
            _ => {
                tracing::debug!(rank, stage = stage.name(), "server stage");
                seen.ranks.insert(rank, (stage, now_unix_ms(), node));
            }
        }
    }

    /// Moves every rank known to `stage` (a stage of the whole group:
    /// the warm-up).
    pub(crate) fn reach_all(&self, stage: ServerStage) {
        let ranks: Vec<(u32, String)> = self
            .seen()
            .ranks
            .iter()
            .map(|(r, (_, _, n))| (*r, n.clone()))
            .collect();
        for (rank, node) in ranks {
            self.reach(rank, node, stage);
        }
    }

    /// One line of the server's output.
    pub(crate) fn observe(&self, raw: &str) {
        let line = Secrets::redact_values(&shown_line(raw), &self.secrets);
        let worker = ray_worker_prefix(&line);
        let message = message_of(&line);
        let (rank, node) = {
            let mut seen = self.seen();
            if seen.tail.len() == FAILURE_LINES {
                seen.tail.pop_front();
            }
            seen.tail.push_back(line.clone());
            match &worker {
                Some((pid, ip)) => {
                    if let Some(ip) = ip {
                        seen.pid_nodes.insert(*pid, ip.clone());
                    }
                    if let Some(rank) = world_rank(message) {
                        seen.pid_ranks.insert(*pid, rank);
                    }
                    (
                        seen.pid_ranks.get(pid).copied(),
                        seen.pid_nodes.get(pid).cloned().unwrap_or_default(),
                    )
                }
                None => (Some(self.own_rank), self.own_node.clone()),
            }
        };
        if let Some(exception) = exception_of(message) {
            let mut seen = self.seen();
            if seen.exception.is_none() {
                seen.exception = Some((exception.to_string(), rank.unwrap_or(self.own_rank)));
                seen.cause = seen.tail.iter().cloned().collect();
            }
        }
        let stage = stage_of(message).or_else(|| {
            // vLLM's logger writes only once vLLM is imported.
            logged_by_vllm(&line).then_some(ServerStage::ImportsDone)
        });
        let Some(stage) = stage else {
            return;
        };
        match (stage, rank) {
            // The engine's KV cache and the API are the whole group's.
            (ServerStage::KvCacheAllocated | ServerStage::ApiUp, _) => self.reach_all(stage),
            (_, Some(rank)) => self.reach(rank, node, stage),
            (_, None) => {}
        }
    }

    /// Every rank's stage, by rank.
    pub(crate) fn stages(&self) -> Vec<RankStage> {
        let seen = self.seen();
        seen.ranks
            .iter()
            .map(|(rank, (stage, since, node))| RankStage {
                rank: *rank,
                node: node.clone(),
                stage: *stage,
                since_unix_ms: *since,
                pid: seen
                    .pid_ranks
                    .iter()
                    .find(|(_, r)| *r == rank)
                    .map(|(pid, _)| *pid),
            })
            .collect()
    }

    /// The Ray workers whose output this watch read: (rank, pid).
    pub(crate) fn workers(&self) -> Vec<(u32, u32)> {
        self.seen()
            .pid_ranks
            .iter()
            .map(|(pid, rank)| (*rank, *pid))
            .collect()
    }

    /// The secret values of the server's argv and environment.
    pub(crate) fn secrets(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.secrets)
    }

    /// The rank of the process this watch reads.
    pub(crate) fn own_rank(&self) -> u32 {
        self.own_rank
    }

    /// The failure of a process that ended with `exit` before it served:
    /// the rank of its first exception (this rank without one), that
    /// rank's last stage, the exception, and the last lines up to it (the
    /// last lines of all without one).
    pub(crate) fn failure(&self, exit: ExitStatus) -> StartupFailure {
        let seen = self.seen();
        let (exception, rank) = match &seen.exception {
            Some((text, rank)) => (Some(text.clone()), *rank),
            None => (None, self.own_rank),
        };
        let (stage, node) = seen
            .ranks
            .get(&rank)
            .map(|(s, _, n)| (*s, n.clone()))
            .unwrap_or((ServerStage::ProcessUp, self.own_node.clone()));
        StartupFailure {
            rank,
            node,
            stage,
            exit,
            exception,
            last_lines: if seen.exception.is_some() {
                seen.cause.clone()
            } else {
                seen.tail.iter().cloned().collect()
            },
            at_unix_ms: now_unix_ms(),
            identical: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as vLLM 0.32 printed them behind Ray (tp 2 over two nodes).
    const RAY_RUN: &[&str] = &[
        "(APIServer pid=5692) INFO 12-06 07:46:17 [api_utils.py:286] non-default args: {'model_tag': '/m', 'api_key': 'sk-abcdef123456'}",
        "(EngineCore pid=5709) INFO 12-06 07:46:23 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/m'",
        "\u{1b}[36m(RayWorkerProc pid=5771, ip=127.0.0.121)\u{1b}[0m (Worker pid=5771) INFO 12-06 07:46:31 [parallel_state.py:1906] world_size=2 rank=1 local_rank=0 distributed_init_method=tcp://127.0.0.120:39709 backend=gloo",
        "\u{1b}[36m(RayWorkerProc pid=5735)\u{1b}[0m (Worker pid=5735) INFO 12-06 07:46:31 [parallel_state.py:1906] world_size=2 rank=0 local_rank=0 distributed_init_method=tcp://127.0.0.120:39709 backend=gloo",
        "\u{1b}[36m(RayWorkerProc pid=5771)\u{1b}[0m (Worker_TP1 pid=5771) INFO 12-06 07:46:31 [default_loader.py:501] Loading weights took 0.01 seconds",
    ];

    fn watch() -> OutputWatch {
        let argv = vec!["vllm".into(), "--api-key".into(), "sk-abcdef123456".into()];
        OutputWatch::new(0, "127.0.0.120", &argv, &[])
    }

    fn stage(w: &OutputWatch, rank: u32) -> Option<ServerStage> {
        w.stages().iter().find(|s| s.rank == rank).map(|s| s.stage)
    }

    #[test]
    fn ranks_move_through_stages_from_their_own_lines() {
        let w = watch();
        assert_eq!(stage(&w, 0), Some(ServerStage::ProcessUp));
        for line in &RAY_RUN[..3] {
            w.observe(line);
        }
        assert_eq!(stage(&w, 0), Some(ServerStage::ImportsDone));
        assert_eq!(stage(&w, 1), Some(ServerStage::DistributedInit));
        let one = w.stages().into_iter().find(|s| s.rank == 1).unwrap();
        assert_eq!(one.node, "127.0.0.121");
        // Its worker's pid is known from its own line; rank 0's not yet.
        assert_eq!(one.pid, Some(5771));
        let zero = w.stages().into_iter().find(|s| s.rank == 0).unwrap();
        assert_eq!(zero.pid, None);
        w.observe(RAY_RUN[3]);
        let zero = w.stages().into_iter().find(|s| s.rank == 0).unwrap();
        assert_eq!(zero.pid, Some(5735));
        w.observe(RAY_RUN[4]);
        // Rank 1's loading line carries no ip: the pid says which rank.
        assert_eq!(stage(&w, 1), Some(ServerStage::WeightsLoaded));
        assert_eq!(stage(&w, 0), Some(ServerStage::DistributedInit));
        w.observe("(EngineCore pid=5709) INFO 12-06 07:46:33 [kv_cache_utils.py:2327] CPU KV cache size: 4,194,304 tokens");
        assert_eq!(stage(&w, 0), Some(ServerStage::KvCacheAllocated));
        assert_eq!(stage(&w, 1), Some(ServerStage::KvCacheAllocated));
        w.observe("INFO:     Application startup complete.");
        assert_eq!(stage(&w, 1), Some(ServerStage::ApiUp));
        // Never back.
        w.observe(RAY_RUN[0]);
        assert_eq!(stage(&w, 0), Some(ServerStage::ApiUp));
    }

    #[test]
    fn a_failure_names_the_first_exception_its_rank_and_stage_without_secrets() {
        let w = watch();
        for line in RAY_RUN {
            w.observe(line);
        }
        w.observe("\u{1b}[36m(RayWorkerProc pid=5771)\u{1b}[0m Traceback (most recent call last):");
        w.observe("\u{1b}[36m(RayWorkerProc pid=5771)\u{1b}[0m ValueError: Available memory on node 0 (20.45/23.54 GiB) on startup is less than desired");
        w.observe("(EngineCore pid=5709) RuntimeError: Engine core initialization failed. See root cause above.");
        let f = w.failure(ExitStatus {
            code: Some(1),
            signal: None,
        });
        assert_eq!(f.rank, 1);
        assert_eq!(f.node, "127.0.0.121");
        assert_eq!(f.stage, ServerStage::WeightsLoaded);
        assert_eq!(
            f.exception.as_deref(),
            Some(
                "ValueError: Available memory on node 0 (20.45/23.54 GiB) on startup is less than desired"
            )
        );
        // The lines up to the first exception, not the second one after.
        assert_eq!(f.last_lines.len(), 7);
        assert!(f.last_lines[6].starts_with("(RayWorkerProc pid=5771) ValueError"));
        let all = f.last_lines.join("\n");
        assert!(!all.contains("sk-abcdef123456"), "{all}");
        assert!(all.contains("<redacted>"), "{all}");
        assert!(!all.contains('\u{1b}'), "{all}");
    }

    #[test]
    fn vllms_own_prefixes_and_logger_headers_are_not_rays() {
        assert_eq!(ray_worker_prefix("(APIServer pid=5692) INFO x"), None);
        assert_eq!(ray_worker_prefix("(Worker_TP1 pid=9) INFO x"), None);
        assert_eq!(ray_worker_prefix("(pid=5735) Triton"), Some((5735, None)));
        assert_eq!(
            message_of("(EngineCore pid=5709) ERROR 12-06 07:46:33 [core.py:1234] ValueError: no"),
            "ValueError: no"
        );
    }

    #[test]
    fn exception_lines_are_told_from_prose() {
        assert!(exception_of("ValueError: bad").is_some());
        assert!(exception_of("torch.OutOfMemoryError: CUDA out of memory").is_some());
        assert!(exception_of("ray.exceptions.RayTaskError(ValueError): x").is_some());
        assert!(exception_of("KeyboardInterrupt").is_some());
        assert!(exception_of("The Error: is not one").is_none());
        assert!(exception_of("INFO 12-06 [x.py:1] Error: none").is_none());
        assert!(exception_of("Traceback (most recent call last):").is_none());
    }

    #[test]
    fn any_line_of_vllms_logger_means_its_imports_are_done() {
        let w = OutputWatch::new(1, "10.0.0.2", &[], &[]);
        w.observe(
            "(Worker pid=9) WARNING 12-06 07:46:31 [cpu_worker.py:114] libtcmalloc is not found",
        );
        assert_eq!(stage(&w, 1), Some(ServerStage::ImportsDone));
        assert!(!logged_by_vllm("INFO:     Started server process [5692]"));
    }

    #[test]
    fn the_tail_is_bounded() {
        let w = watch();
        for i in 0..100 {
            w.observe(&format!("line {i}"));
        }
        let f = w.failure(ExitStatus::default());
        assert_eq!(f.last_lines.len(), FAILURE_LINES);
        assert_eq!(f.last_lines.last().map(String::as_str), Some("line 99"));
        assert_eq!(f.rank, 0);
        assert_eq!(f.stage, ServerStage::ProcessUp);
    }
}
