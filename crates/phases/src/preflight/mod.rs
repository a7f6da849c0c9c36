//! The gang preflight: before the server starts, every node of the group
//! joins a timed collective over the addresses vLLM will use (Gloo on
//! CPU, NCCL on GPUs) and says which GPUs it sees; a node that does not
//! join, is slow past a bound or sees the wrong GPUs is named with what it
//! saw. The check itself is `gang_check.py` (run with the server's own
//! Python, which has torch), one rank per node: [`check_rank`] on a
//! native rank, [`check_ray`] from the Ray head (a task per node). The
//! results are judged by [`judge`] and reported by
//! `Status::preflight_done`.

use crate::config::{CollectiveBackend, PreflightConfig, PreflightMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The check every rank runs.
const SCRIPT: &str = include_str!("gang_check.py");
/// The most bytes of the check's output read.
const OUTPUT_BYTES: usize = 256 * 1024;
/// The most bytes of its error output kept (its last lines).
const ERROR_BYTES: usize = 2048;

/// What the preflight does, from `[serve.preflight]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreflightSpec {
    /// Off, warn or required.
    pub mode: PreflightMode,
    /// The collective's library.
    pub backend: CollectiveBackend,
    /// The all-reduce's size.
    pub bytes: u64,
    /// How long every rank may take.
    pub timeout: Duration,
    /// A slower ping-pong with rank 0 names the rank, ms.
    pub max_p2p_ms: f64,
    /// A slower all-reduce fails the preflight, ms.
    pub max_allreduce_ms: f64,
    /// Each node must see the GPUs it offers.
    pub check_gpus: bool,
    /// The Python that runs the check; `None`: beside the server's program.
    pub python: Option<PathBuf>,
}

impl PreflightSpec {
    /// The spec of `[serve.preflight]`.
    pub fn of(config: &PreflightConfig) -> Self {
        Self {
            mode: config.mode,
            backend: config.backend,
            bytes: config.kib.saturating_mul(1024),
            timeout: Duration::from_secs(config.timeout_seconds),
            max_p2p_ms: config.max_p2p_ms as f64,
            max_allreduce_ms: config.max_allreduce_ms as f64,
            check_gpus: config.check_gpus,
            python: config.python.clone(),
        }
    }

    /// Whether a preflight runs at all.
    pub fn on(&self) -> bool {
        self.mode != PreflightMode::Off
    }

    /// The Python for a server started as `program`: the configured one,
    /// else `python3` (or `python`) beside the program, else `python3`.
    pub fn python_for(&self, program: &str) -> PathBuf {
        if let Some(python) = &self.python {
            return python.clone();
        }
        if program.contains('/') {
            for name in ["python3", "python"] {
                let beside = Path::new(program).with_file_name(name);
                if beside.is_file() {
                    return beside;
                }
            }
        }
        PathBuf::from("python3")
    }

    /// The check's arguments common to every mode.
    fn common_args(&self, master: &str) -> Vec<String> {
        let mut args = vec![
            "--master".into(),
            master.into(),
            "--backend".into(),
            self.backend.name().into(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--timeout".into(),
            self.timeout.as_secs().to_string(),
        ];
        if self.check_gpus {
            args.push("--check-gpus".into());
        }
        args
    }

    /// How long the whole check may run: every rank's timeout twice (join,
    /// then the collective) and a margin for torch's imports.
    pub fn limit(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(30)
    }
}

/// One rank's check, as it reported it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RankCheck {
    /// The rank (the group's order: rank 0 hosts the master).
    pub rank: u32,
    /// Its host name.
    pub host: String,
    /// Its address.
    pub address: String,
    /// The library it used.
    pub backend: String,
    /// The GPUs it sees (device names).
    pub gpus: Vec<String>,
    /// Its `CUDA_VISIBLE_DEVICES`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_visible_devices: Option<String>,
    /// Rank 0: the ranks that did not join.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u32>,
    /// How long it took every rank to join, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_ms: Option<f64>,
    /// The all-reduce's median time, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_ms: Option<f64>,
    /// The all-reduce's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rank 0: each other rank's ping-pong, ms.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub p2p_ms: BTreeMap<String, f64>,
    /// The whole check, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<f64>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RankCheck {
    /// A rank that gave no result.
    pub(crate) fn failed(rank: u32, address: &str, error: impl Into<String>) -> Self {
        Self {
            rank,
            address: address.to_string(),
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// As kept from a peer: every text one bounded line, lists bounded.
    pub(crate) fn bounded(mut self) -> Self {
        use orchestrator_domain::startup::shown_line;
        self.host = shown_line(&self.host);
        self.address = shown_line(&self.address);
        self.backend = shown_line(&self.backend);
        self.gpus.truncate(64);
        self.gpus = self.gpus.iter().map(|g| shown_line(g)).collect();
        self.cuda_visible_devices = self.cuda_visible_devices.as_deref().map(shown_line);
        self.missing.truncate(1024);
        self.p2p_ms = self.p2p_ms.into_iter().take(1024).collect();
        self.error = self.error.as_deref().map(shown_line);
        self
    }
}

/// A node the preflight names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NamedNode {
    /// Its rank.
    pub rank: u32,
    /// Its address (or host name).
    pub node: String,
    /// What is wrong, with what it saw.
    pub why: String,
}

/// The group's preflight, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PreflightResult {
    /// Every rank joined, the collective ran within its bounds, and every
    /// node saw its GPUs.
    pub passed: bool,
    /// How long the whole preflight took, ms.
    pub took_ms: u64,
    /// The all-reduce's time (rank 0's), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_ms: Option<f64>,
    /// The nodes named, with why.
    pub named: Vec<NamedNode>,
    /// Every rank's own report.
    pub ranks: Vec<RankCheck>,
}

impl PreflightResult {
    /// One line: passed with the figures, or the nodes named.
    pub fn summary(&self) -> String {
        if self.passed {
            let slowest = self.ranks.iter().flat_map(|r| r.p2p_ms.iter()).fold(
                None::<(&String, f64)>,
                |best, (rank, ms)| match best {
                    Some((_, b)) if b >= *ms => best,
                    _ => Some((rank, *ms)),
                },
            );
            let backend = self
                .ranks
                .first()
                .map_or("", |r| r.backend.as_str())
                .to_string();
            let mut line = format!(
                "gang preflight passed: {} ranks, {backend} all-reduce {:.1} ms",
                self.ranks.len(),
                self.allreduce_ms.unwrap_or(0.0)
            );
            if let Some((rank, ms)) = slowest {
                line.push_str(&format!(", slowest link rank 0 <-> rank {rank} {ms:.1} ms"));
            }
            line.push_str(&format!(" (took {} ms)", self.took_ms));
            return line;
        }
        let named: Vec<String> = self
            .named
            .iter()
            .map(|n| format!("rank {} on {}: {}", n.rank, n.node, n.why))
            .collect();
        format!("gang preflight failed: {}", named.join("; "))
    }
}

/// Judges every rank's report (`ranks`, expected `world` of them, at
/// `addresses` by rank) against `spec`'s bounds.
pub fn judge(
    spec: &PreflightSpec,
    world: u32,
    addresses: &BTreeMap<u32, String>,
    mut ranks: Vec<RankCheck>,
    took: Duration,
) -> PreflightResult {
    ranks.sort_by_key(|r| r.rank);
    let node = |rank: u32, check: Option<&RankCheck>| {
        check
            .map(|c| c.address.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| addresses.get(&rank).cloned())
            .unwrap_or_else(|| format!("rank {rank}'s node"))
    };
    let mut named: Vec<NamedNode> = Vec::new();
    let missing: Vec<u32> = ranks
        .iter()
        .find(|r| r.rank == 0)
        .map(|r| r.missing.clone())
        .unwrap_or_default();
    for rank in 0..world {
        let check = ranks.iter().find(|r| r.rank == rank);
        let blamed_elsewhere = |e: &str| e.starts_with("ranks [") || e.contains("did not form");
        let why = match check {
            None if missing.contains(&rank) => Some(format!(
                "did not join the group's master within {} s (and gave no result)",
                spec.timeout.as_secs()
            )),
            None => Some("gave no result".to_string()),
            Some(c) => match &c.error {
                Some(e) if !blamed_elsewhere(e) => Some(e.clone()),
                _ if missing.contains(&rank) => {
                    Some("did not join the group's master in time".to_string())
                }
                _ => None,
            },
        };
        if let Some(why) = why {
            named.push(NamedNode {
                rank,
                node: node(rank, check),
                why,
            });
        }
    }
    let allreduce_ms = ranks
        .iter()
        .find(|r| r.rank == 0)
        .and_then(|r| r.allreduce_ms);
    if named.is_empty() {
        for (rank, ms) in ranks.iter().flat_map(|r| r.p2p_ms.iter()) {
            let Ok(rank) = rank.parse::<u32>() else {
                continue;
            };
            if *ms > spec.max_p2p_ms {
                let check = ranks.iter().find(|r| r.rank == rank);
                named.push(NamedNode {
                    rank,
                    node: node(rank, check),
                    why: format!(
                        "slow: its ping-pong with rank 0 took {ms:.1} ms (serve.preflight.max-p2p-ms {})",
                        spec.max_p2p_ms
                    ),
                });
            }
        }
    }
    if named.is_empty()
        && let Some(ms) = allreduce_ms.filter(|ms| *ms > spec.max_allreduce_ms)
    {
        named.push(NamedNode {
            rank: 0,
            node: node(0, ranks.first()),
            why: format!(
                "the group's all-reduce took {ms:.1} ms (serve.preflight.max-allreduce-ms {})",
                spec.max_allreduce_ms
            ),
        });
    }
    for check in &mut ranks {
        if check.address.is_empty()
            && let Some(address) = addresses.get(&check.rank)
        {
            check.address.clone_from(address);
        }
    }
    PreflightResult {
        passed: named.is_empty() && ranks.len() as u32 >= world,
        took_ms: took.as_millis() as u64,
        allreduce_ms,
        named,
        ranks: ranks.into_iter().map(RankCheck::bounded).collect(),
    }
}

/// One rank of the group's check, on this node: rank `rank` of `world`,
/// the master at `master` (rank 0 hosts it there), expecting `gpus` GPUs,
/// with the server's environment `env` (its interface settings).
pub async fn check_rank(
    spec: &PreflightSpec,
    python: &Path,
    rank: u32,
    world: u32,
    master: &str,
    gpus: Option<u32>,
    env: &[(String, String)],
) -> RankCheck {
    let address = master.rsplit_once(':').map_or("", |(h, _)| h);
    let mut args = vec![
        "rank".to_string(),
        "--rank".into(),
        rank.to_string(),
        "--world".into(),
        world.to_string(),
    ];
    args.extend(spec.common_args(master));
    if let Some(gpus) = gpus.filter(|_| spec.check_gpus) {
        args.extend(["--expect-gpus".into(), gpus.to_string()]);
    }
    match run_check(python, &args, env, spec.limit()).await {
        Ok(mut lines) if !lines.is_empty() => lines.swap_remove(0),
        Ok(_) => RankCheck::failed(
            rank,
            if rank == 0 { address } else { "" },
            "the check printed no result",
        ),
        Err(e) => RankCheck::failed(rank, if rank == 0 { address } else { "" }, e),
    }
}

/// The group's check on a Ray cluster, from the head: a task per alive
/// node (the head's own is rank 0, hosting the master at `master`),
/// through the GCS at `gcs`.
pub async fn check_ray(
    spec: &PreflightSpec,
    python: &Path,
    gcs: &str,
    master: &str,
    env: &[(String, String)],
) -> Result<Vec<RankCheck>, String> {
    let mut args = vec!["ray".to_string(), "--address".into(), gcs.to_string()];
    args.extend(spec.common_args(master));
    run_check(python, &args, env, spec.limit()).await
}

/// Runs the check with `python` (its output bounded, within `limit`);
/// its JSON lines.
async fn run_check(
    python: &Path,
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> Result<Vec<RankCheck>, String> {
    let script = ScriptDir::write()?;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script.path())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| {
        format!(
            "cannot run {} ({e}): set serve.preflight.python to a Python with torch",
            python.display()
        )
    })?;
    let pgid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (out, err) = tokio::join!(
            crate::supervision::read_at_most(stdout, OUTPUT_BYTES),
            read_tail(stderr, ERROR_BYTES)
        );
        (out, err, child.wait().await)
    };
    let outcome = tokio::time::timeout(limit, run).await;
    // Whatever the check left (torch's helpers, a Ray driver's children).
    if let Some(pgid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let ((out, _cut), err, exit) =
        outcome.map_err(|_| format!("the check did not finish within {} s", limit.as_secs()))?;
    let lines: Vec<RankCheck> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.is_empty() {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(orchestrator_domain::startup::shown_line)
            .unwrap_or_default();
        return Err(format!(
            "the check ended ({}) after {} ms without a result: {last}",
            exit.map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            started.elapsed().as_millis()
        ));
    }
    Ok(lines)
}

/// The last `limit` bytes of `pipe`.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>, limit: usize) -> String {
    use tokio::io::AsyncReadExt as _;
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > limit {
            kept.drain(..kept.len() - limit);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A free TCP port on `address` for the check's master (rank 0 binds it
/// a moment later).
pub fn free_port(address: &str) -> Option<u16> {
    let listener = std::net::TcpListener::bind((address, 0)).ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// The server's network settings the check runs with (which interface
/// Gloo and NCCL use, the node's address, the GPUs it sees); never any
/// other variable, so no secret.
pub fn network_env(env: &[orchestrator_domain::KeyValue]) -> Vec<orchestrator_domain::KeyValue> {
    const PREFIXES: [&str; 5] = [
        "GLOO_",
        "NCCL_",
        "TP_SOCKET_IFNAME",
        "CUDA_VISIBLE_DEVICES",
        "VLLM_HOST_IP",
    ];
    env.iter()
        .filter(|kv| PREFIXES.iter().any(|p| kv.key.starts_with(p)))
        .filter(|kv| !orchestrator_domain::secrets::secrets().is_secret_name(&kv.key))
        .cloned()
        .collect()
}

/// The check written to a private folder of its own (`0700`), removed
/// when the check is over: a node that runs many checks leaves no folder
/// behind.
struct ScriptDir(PathBuf);

impl ScriptDir {
    /// Writes the check into a new folder, unique to this process and
    /// call.
    fn write() -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        use std::sync::atomic::{AtomicU64, Ordering};
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "orchestrator-preflight-{}-{}",
            std::process::id(),
            CALLS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let written = Self(dir);
        let path = written.path();
        std::fs::write(&path, SCRIPT)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(written)
    }

    /// The check's file.
    fn path(&self) -> PathBuf {
        self.0.join("gang_check.py")
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PreflightSpec {
        PreflightSpec::of(&PreflightConfig {
            mode: PreflightMode::Required,
            max_p2p_ms: 100,
            ..PreflightConfig::default()
        })
    }

    fn ok(rank: u32) -> RankCheck {
        RankCheck {
            rank,
            address: format!("10.0.0.{rank}"),
            backend: "gloo".into(),
            allreduce_ms: Some(5.0),
            ..RankCheck::default()
        }
    }

    #[test]
    fn the_checks_folder_is_its_own_and_gone_after_the_check() {
        let (one, two) = (ScriptDir::write().unwrap(), ScriptDir::write().unwrap());
        assert_ne!(one.path(), two.path());
        assert_eq!(std::fs::read_to_string(one.path()).unwrap(), SCRIPT);
        let folder = one.path().parent().unwrap().to_path_buf();
        drop(one);
        assert!(!folder.exists(), "{} left behind", folder.display());
        assert!(two.path().is_file(), "the other check's file stays");
    }

    #[test]
    fn a_rank_that_did_not_join_is_named_not_rank_zero() {
        let mut zero = ok(0);
        zero.missing = vec![2];
        zero.error = Some("ranks [2] did not join the master 10.0.0.0:1 within 60 s".into());
        let two = RankCheck::failed(
            2,
            "10.0.0.2",
            "cannot reach the group's master 10.0.0.0:1: timed out",
        );
        let result = judge(
            &spec(),
            3,
            &BTreeMap::new(),
            vec![zero, ok(1), two],
            Duration::from_secs(61),
        );
        assert!(!result.passed);
        assert_eq!(result.named.len(), 1, "{:?}", result.named);
        assert_eq!(result.named[0].rank, 2);
        assert!(
            result.named[0].why.contains("cannot reach"),
            "{:?}",
            result.named
        );
        assert!(
            result
                .summary()
                .starts_with("gang preflight failed: rank 2 on 10.0.0.2")
        );
        // A rank with no result at all is named with its address.
        let mut zero = ok(0);
        zero.missing = vec![1];
        let addresses = BTreeMap::from([(1, "10.0.0.9".to_string())]);
        let result = judge(&spec(), 2, &addresses, vec![zero], Duration::ZERO);
        assert_eq!(result.named[0].node, "10.0.0.9");
        assert_eq!(
            result.named[0].why,
            "did not join the group's master within 60 s (and gave no result)"
        );
    }

    #[test]
    fn a_slow_link_and_wrong_gpus_are_named_and_a_good_group_passes() {
        let mut zero = ok(0);
        zero.p2p_ms = BTreeMap::from([("1".to_string(), 3.0), ("2".to_string(), 250.0)]);
        let result = judge(
            &spec(),
            3,
            &BTreeMap::new(),
            vec![zero.clone(), ok(1), ok(2)],
            Duration::ZERO,
        );
        assert_eq!(result.named.len(), 1);
        assert_eq!(result.named[0].rank, 2);
        assert!(result.named[0].why.contains("250.0 ms"));
        let mut gpus = ok(1);
        gpus.error = Some("sees 7 GPUs (H100, ...), expected 8".into());
        let mut zero_wrong = ok(0);
        zero_wrong.error = Some("ranks [1] see the wrong GPUs".into());
        let result = judge(
            &spec(),
            2,
            &BTreeMap::new(),
            vec![zero_wrong, gpus],
            Duration::ZERO,
        );
        assert_eq!(result.named.len(), 1);
        assert_eq!(result.named[0].rank, 1);
        zero.p2p_ms.insert("2".into(), 4.0);
        let result = judge(
            &spec(),
            3,
            &BTreeMap::new(),
            vec![zero, ok(1), ok(2)],
            Duration::ZERO,
        );
        assert!(result.passed, "{:?}", result.named);
        assert!(
            result
                .summary()
                .contains("slowest link rank 0 <-> rank 2 4.0 ms"),
            "{}",
            result.summary()
        );
    }
}
