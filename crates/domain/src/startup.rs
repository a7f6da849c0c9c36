//! A serving process's start, rank by rank: the stage each rank's server
//! has reached ([`ServerStage`], read from the server's own output), and a
//! start that ended in an exit ([`StartupFailure`]), kept with its cause.
//! Field names are kebab-case in `/status` and on the wire between ranks.

use crate::ExitStatus;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How far one rank's server has come, in the order the stages happen.
/// Each is reached when the server says so in its output (or, for
/// [`WarmedUp`](Self::WarmedUp), when the orchestrator's warm-up completion
/// came back).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ServerStage {
    /// The process exists.
    ProcessUp,
    /// Its Python imports are done: it parsed its arguments.
    ImportsDone,
    /// It joined the distributed group (its rank in the world is set).
    DistributedInit,
    /// Its share of the weights is loaded.
    WeightsLoaded,
    /// Its KV cache is allocated (profiling done).
    KvCacheAllocated,
    /// The API server is up (only the rank that serves HTTP).
    ApiUp,
    /// A warm-up completion succeeded.
    WarmedUp,
}

impl ServerStage {
    /// Every stage, in order.
    pub const ALL: [ServerStage; 7] = [
        Self::ProcessUp,
        Self::ImportsDone,
        Self::DistributedInit,
        Self::WeightsLoaded,
        Self::KvCacheAllocated,
        Self::ApiUp,
        Self::WarmedUp,
    ];

    /// The kebab-case name, as `/status`, the metrics and the log show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ProcessUp => "process-up",
            Self::ImportsDone => "imports-done",
            Self::DistributedInit => "distributed-init",
            Self::WeightsLoaded => "weights-loaded",
            Self::KvCacheAllocated => "kv-cache-allocated",
            Self::ApiUp => "api-up",
            Self::WarmedUp => "warmed-up",
        }
    }

    /// What the server does while in this stage (before the next one):
    /// for a message such as "failed while loading weights".
    pub fn doing(self) -> &'static str {
        match self {
            Self::ProcessUp => "importing vLLM",
            Self::ImportsDone => "joining the distributed group",
            Self::DistributedInit => "loading weights",
            Self::WeightsLoaded => "allocating the KV cache",
            Self::KvCacheAllocated => "starting the API server",
            Self::ApiUp => "warming up",
            Self::WarmedUp => "serving",
        }
    }
}

impl fmt::Display for ServerStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Where one rank is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RankStage {
    /// The rank (0: the leader's or the Ray head's server).
    pub rank: u32,
    /// The node it runs on (its address), where known.
    pub node: String,
    /// The last stage it reached.
    pub stage: ServerStage,
    /// When it reached it, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// The process that serves it, where the serving output named it: a
    /// Ray worker's pid (on its own node, from its `(RayWorkerProc
    /// pid=P)` lines), so an operator can attach to that rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The most output lines a failure keeps.
pub const FAILURE_LINES: usize = 20;
/// The most bytes of one kept line (the rest is cut).
pub const FAILURE_LINE_BYTES: usize = 512;

/// A server that exited before it served: on which rank, at which stage,
/// how, and why as far as its output says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StartupFailure {
    /// The rank whose server failed first (0 where no other rank is named).
    pub rank: u32,
    /// The node it ran on.
    pub node: String,
    /// The last stage the failing rank reached.
    pub stage: ServerStage,
    /// How the process ended.
    pub exit: ExitStatus,
    /// The exception line (`ValueError: ...`), when the output has one.
    pub exception: Option<String>,
    /// The last lines of that rank's output, secrets redacted.
    pub last_lines: Vec<String>,
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Failures in a row with the same cause, this one included.
    pub identical: u32,
}

impl StartupFailure {
    /// Whether `other` has the same cause: the same stage and exception
    /// (numbers aside: `20.92/23.54 GiB` and `21.08/23.54 GiB` are one
    /// cause), or, without an exception, the same exit.
    pub fn same_cause(&self, other: &StartupFailure) -> bool {
        self.stage == other.stage
            && match (&self.exception, &other.exception) {
                (Some(a), Some(b)) => without_numbers(a) == without_numbers(b),
                (None, None) => self.exit == other.exit,
                _ => false,
            }
    }

    /// One line: what failed, on which rank and node, at which stage, and
    /// why.
    pub fn summary(&self) -> String {
        let how = match (self.exit.code, self.exit.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "could not be started".to_string(),
        };
        let node = if self.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.node)
        };
        let why = self
            .exception
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        format!(
            "rank {}'s server{node} {how} while {} (last stage {}){why}",
            self.rank,
            self.stage.doing(),
            self.stage
        )
    }
}

/// A rank that stayed in one stage past that stage's deadline: where,
/// for how long, and what its main thread was doing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Stall {
    /// The rank.
    pub rank: u32,
    /// Its node.
    pub node: String,
    /// The stage it is stuck after.
    pub stage: ServerStage,
    /// How long it had been in that stage when the stall was seen, ms.
    pub stalled_ms: u64,
    /// The deadline it passed, ms.
    pub deadline_ms: u64,
    /// The innermost frames of the rank's main-thread Python stack
    /// (`function (file:line)`), innermost first; empty when no stack
    /// could be taken.
    pub top_frames: Vec<String>,
    /// Where every thread's stacks of every process were written, when
    /// they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_file: Option<String>,
    /// Why no stacks were taken, when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_error: Option<String>,
    /// When it was seen, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

impl Stall {
    /// The most frames kept in [`top_frames`](Self::top_frames).
    pub const TOP_FRAMES: usize = 8;

    /// One line: which rank is stuck where, for how long, doing what.
    pub fn summary(&self) -> String {
        let node = if self.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.node)
        };
        let doing = match self.top_frames.first() {
            Some(frame) => format!("; innermost frame {frame}"),
            None => self
                .stacks_error
                .as_deref()
                .map(|e| format!("; no stacks: {e}"))
                .unwrap_or_default(),
        };
        format!(
            "rank {}'s server{node} has been {} for {} s (after stage {}; deadline {} s){doing}",
            self.rank,
            self.stage.doing(),
            self.stalled_ms / 1000,
            self.stage,
            self.deadline_ms / 1000,
        )
    }
}

/// How long a rank may stay in each stage before it reaches the next, in
/// seconds; past it the rank is stalled. The defaults fit a 400B model
/// read from slow network storage: imports from a cold image layer, a
/// group whose last node is still pulling its image, weights at about
/// 100 MB/s per node, and a long compile and graph capture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StageDeadlines {
    /// From the process's start to its imports done.
    pub process_up: u64,
    /// From the imports to joining the distributed group (every rank must
    /// have come this far).
    pub imports_done: u64,
    /// Loading the weights.
    pub distributed_init: u64,
    /// Profiling and allocating the KV cache (compilation and graph
    /// capture included).
    pub weights_loaded: u64,
    /// Starting the API server.
    pub kv_cache_allocated: u64,
    /// The warm-up completion.
    pub api_up: u64,
}

impl Default for StageDeadlines {
    fn default() -> Self {
        Self {
            process_up: 600,
            imports_done: 900,
            distributed_init: 5400,
            weights_loaded: 2400,
            kv_cache_allocated: 600,
            api_up: 600,
        }
    }
}

impl StageDeadlines {
    /// The deadline of `stage`, ms; `None` for the last stage (a warmed-up
    /// server is serving, not starting).
    pub fn of(&self, stage: ServerStage) -> Option<u64> {
        let seconds = match stage {
            ServerStage::ProcessUp => self.process_up,
            ServerStage::ImportsDone => self.imports_done,
            ServerStage::DistributedInit => self.distributed_init,
            ServerStage::WeightsLoaded => self.weights_loaded,
            ServerStage::KvCacheAllocated => self.kv_cache_allocated,
            ServerStage::ApiUp => self.api_up,
            ServerStage::WarmedUp => return None,
        };
        Some(seconds.saturating_mul(1000))
    }

    /// Sets the deadline of the stage named `name` (as
    /// [`ServerStage::name`] spells it) to `seconds`; names the stages
    /// that have one when `name` is none of them.
    pub fn set(&mut self, name: &str, seconds: u64) -> Result<(), String> {
        let slot = match ServerStage::ALL.iter().find(|s| s.name() == name) {
            Some(ServerStage::ProcessUp) => &mut self.process_up,
            Some(ServerStage::ImportsDone) => &mut self.imports_done,
            Some(ServerStage::DistributedInit) => &mut self.distributed_init,
            Some(ServerStage::WeightsLoaded) => &mut self.weights_loaded,
            Some(ServerStage::KvCacheAllocated) => &mut self.kv_cache_allocated,
            Some(ServerStage::ApiUp) => &mut self.api_up,
            Some(ServerStage::WarmedUp) | None => {
                let names: Vec<&str> = ServerStage::ALL[..6].iter().map(|s| s.name()).collect();
                return Err(format!(
                    "{name:?} is not a stage with a deadline; use one of {}",
                    names.join(", ")
                ));
            }
        };
        *slot = seconds;
        Ok(())
    }
}

/// `text` with every run of digits (and the points and commas inside it)
/// as one `#`.
fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        let digit = c.is_ascii_digit() || (in_number && (c == '.' || c == ','));
        if digit {
            if !in_number {
                out.push('#');
            }
        } else {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

/// A line of a server's output as it may be kept and shown: at most
/// [`FAILURE_LINE_BYTES`] bytes (cut at a character boundary), control
/// characters and terminal escapes removed.
pub fn shown_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(FAILURE_LINE_BYTES));
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > FAILURE_LINE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_deadline_is_set_by_its_name_and_a_wrong_name_lists_the_right_ones() {
        let mut deadlines = StageDeadlines::default();
        deadlines.set("distributed-init", 120).unwrap();
        assert_eq!(deadlines.of(ServerStage::DistributedInit), Some(120_000));
        assert_eq!(deadlines.of(ServerStage::ProcessUp), Some(600_000));
        let wrong = deadlines.set("warmed-up", 5).unwrap_err();
        assert!(wrong.contains("process-up, imports-done"), "{wrong}");
        assert!(deadlines.set("loading", 5).is_err());
    }

    fn failure(stage: ServerStage, exception: Option<&str>, code: i32) -> StartupFailure {
        StartupFailure {
            rank: 1,
            node: "127.0.0.2".into(),
            stage,
            exit: ExitStatus {
                code: Some(code),
                signal: None,
            },
            exception: exception.map(str::to_string),
            last_lines: vec![],
            at_unix_ms: 0,
            identical: 1,
        }
    }

    #[test]
    fn a_cause_is_its_stage_and_exception() {
        let a = failure(ServerStage::WeightsLoaded, Some("ValueError: x"), 1);
        assert!(a.same_cause(&failure(
            ServerStage::WeightsLoaded,
            Some("ValueError: x"),
            1
        )));
        assert!(!a.same_cause(&failure(ServerStage::ImportsDone, Some("ValueError: x"), 1)));
        assert!(!a.same_cause(&failure(
            ServerStage::WeightsLoaded,
            Some("ValueError: y"),
            1
        )));
        let plain = failure(ServerStage::ProcessUp, None, 1);
        assert!(plain.same_cause(&failure(ServerStage::ProcessUp, None, 1)));
        assert!(!plain.same_cause(&failure(ServerStage::ProcessUp, None, 2)));
    }

    #[test]
    fn the_summary_names_rank_node_stage_and_cause() {
        let s = failure(ServerStage::WeightsLoaded, Some("ValueError: no memory"), 1).summary();
        assert_eq!(
            s,
            "rank 1's server on 127.0.0.2 exited with code 1 while allocating the KV cache (last stage weights-loaded): ValueError: no memory"
        );
    }

    #[test]
    fn shown_lines_lose_escapes_and_controls_and_are_bounded() {
        assert_eq!(shown_line("\u{1b}[36m(pid=1)\u{1b}[0m hi\r"), "(pid=1) hi ");
        assert_eq!(shown_line(&"é".repeat(1000)).len(), FAILURE_LINE_BYTES);
    }
}
