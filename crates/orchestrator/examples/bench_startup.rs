//! `cargo xtask bench startup`: startup faults on this machine with real
//! vLLM (the CPU build), on the native backend and behind real Ray, side
//! by side with the old way (each rank's `vllm serve` started directly).
//!
//! - **stop**: on each backend, a rank (0 or 1, at random) is SIGSTOPped
//!   once it reached a start stage picked at random (process up to
//!   weights loaded; behind Ray from distributed init on, where a worker's
//!   output first says its rank, and `/status` gives its pid); every
//!   stage's deadline is `DEADLINE_S`. A trial is right when the stall the
//!   orchestrator reports names that rank and the stage it was stopped in;
//!   its diagnosis time runs from the SIGSTOP to the stall in `/status`.
//!   The old way: both ranks' `vllm serve` started directly with the
//!   command lines and environment of the first native trial, rank 1
//!   stopped 5-40 s after the start; counted as named if within the
//!   deadline plus 10 s the leader exits or prints a line naming rank 1
//!   or its address.
//! - **exception**: every rank's vLLM fails its start with a ValueError
//!   (the KV cache asks for more memory than the machine has); the tries
//!   until the orchestrator stops (the default health policy's
//!   `stop-after-identical-failures`), and whether `/status` holds the
//!   exception; native and Ray.
//! - **preflight**: rank 1 runs in a network namespace of its own whose
//!   traffic other than the rendezvous is held at 8 bit/s (`tc` htb: this
//!   kernel has no drop action), so it never arrives; the gang
//!   preflight (required) must name rank 1 before any server starts. The
//!   old way: the same group without the preflight, watched for
//!   `OLD_PREFLIGHT_S` for a line naming rank 1.
//! - **first request**: after `/readyz` 200 (ready only after a warm-up
//!   completion) one completion's latency against the steady state (the
//!   median of 5 later ones); the old way: the same group, traffic as soon
//!   as vLLM's own `/health` answers 200.
//!
//! Last line: `BENCH startup trials=N right_rank_stage=<share>
//! diagnosis_max_s=<s> crashloop_tries=<n> first_request_ratio=<x> ...`.
//!
//! Usage: bench_startup ORCHESTRATOR_BINARY (ORCHESTRATOR_VLLM_BIN,
//! ORCHESTRATOR_TINY_MODEL, ORCHESTRATOR_RAY_BIN, ORCHESTRATOR_PY_SPY_BIN
//! set; BENCH_STARTUP_TRIALS, default 3). Needs root for the namespace.

use orchestrator_test_support::{
    NativeGroup, Sig, complete, free_port, http_get, poll_until, required_env, signal,
    signal_group, status,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every start stage's deadline in the trials, seconds.
const DEADLINE_S: u64 = 45;
/// How long the old way (no preflight) is watched for a line naming the
/// rank whose traffic is dropped.
const OLD_PREFLIGHT_S: u64 = 120;
/// The stages a rank is stopped in.
const STAGES: [&str; 4] = [
    "process-up",
    "imports-done",
    "distributed-init",
    "weights-loaded",
];

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

struct Setup {
    binary: PathBuf,
    vllm: String,
    model: String,
    ray: String,
    py_spy: String,
    dir: PathBuf,
}

impl Setup {
    fn python(&self) -> PathBuf {
        Path::new(&self.vllm).with_file_name("python")
    }

    /// `orchestrator local` for the tiny model, tensor-parallel 2 over
    /// two nodes, on `base` and up.
    fn local(
        &self,
        backend: &str,
        base: u8,
        (endpoints, serve): (u16, u16),
        log: &Path,
        extra: &[&str],
    ) -> Child {
        let mut command = Command::new(&self.binary);
        command
            .args(["local", "--backend", backend, "--workers", "1"])
            .args(["--head-ip", &format!("127.0.0.{base}")])
            .args(["--endpoints-port", &endpoints.to_string()])
            .args(["--serve-port", &serve.to_string()])
            .args(["--model", &self.model, "--tp", "2"])
            .args(["--vllm-bin", &self.vllm, "--ray-bin", &self.ray])
            .args(["--vllm-arg=--max-model-len", "--vllm-arg=256"])
            .args(["--vllm-arg=--dtype", "--vllm-arg=bfloat16"])
            .args([
                "--vllm-arg=--enforce-eager",
                "--vllm-env",
                "HF_HUB_OFFLINE=1",
            ])
            .args([
                "--health-interval-ms",
                "500",
                "--health-param",
                "backoff-ms=200",
            ])
            .args(extra)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap_or_else(|e| fail(e)));
        if backend == "ray" {
            let gcs = 26_000 + u16::from(base);
            command
                .args(["--gpus-per-node", "1", "--memory-mib", "1000"])
                .args(["--object-store-mib", "200"])
                .args(["--gcs-port", &gcs.to_string()])
                .args(["--agent-port", &(52_000 + u16::from(base) * 4).to_string()])
                .args([
                    "--metrics-port",
                    &(29_000 + u16::from(base) * 4).to_string(),
                ])
                .arg("--temp-dir")
                .arg(self.dir.join(format!("ray-{base}")))
                .args(["--ray-env", "VLLM_CPU_RAY_TEST_PLATFORM=1"])
                .args(["--vllm-env", "VLLM_CPU_RAY_TEST_PLATFORM=1"]);
        }
        command
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start local: {e}")))
    }
}

/// A random number below `below`: splitmix64, seeded once from the clock
/// and the pid (the clock's low digits alone repeat on this VM).
fn random(below: usize) -> usize {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    if STATE.load(Ordering::Relaxed) == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        STATE.store(
            nanos ^ (u64::from(std::process::id()) << 32) | 1,
            Ordering::Relaxed,
        );
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % below.max(1) as u64) as usize
}

fn stage_index(name: &str) -> usize {
    [
        "process-up",
        "imports-done",
        "distributed-init",
        "weights-loaded",
        "kv-cache-allocated",
        "api-up",
        "warmed-up",
    ]
    .iter()
    .position(|s| *s == name)
    .unwrap_or(usize::MAX)
}

/// Rank `rank`'s stage in a `/status`.
fn stage_of(status: &serde_json::Value, rank: u64) -> Option<String> {
    status["stages"]
        .as_array()?
        .iter()
        .find(|s| s["rank"].as_u64() == Some(rank))
        .and_then(|s| s["stage"].as_str().map(str::to_string))
}

/// The pid (and process group) of rank 1's `vllm serve` (headless).
fn rank1_pid() -> Option<i32> {
    orchestrator_test_support::pid_with_args(&["serve", "--node-rank 1"])
}

struct StopTrial {
    rank: u64,
    stage: String,
    named: Option<(u64, String)>,
    diagnosis: Option<Duration>,
}

/// A process's argv and environment, to start it again the old way.
#[derive(Clone, Debug)]
struct Launched {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launched {
    fn of(pid: i32) -> Option<Self> {
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
        let env = split(std::fs::read(format!("/proc/{pid}/environ")).ok()?)
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        (!argv.is_empty()).then_some(Self { argv, env })
    }

    fn spawn(&self, log: &Path) -> Child {
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap_or_else(|e| fail(e)))
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start {:?}: {e}", self.argv[0])))
    }
}

/// Rank `rank`'s serving process once it reached `target`: the native
/// leader's server, the native member's headless server, or the Ray
/// worker `/status` names for that rank.
fn rank_process(backend: &str, now: &serde_json::Value, rank: u64) -> Option<i32> {
    match (backend, rank) {
        ("ray", _) => now["stages"]
            .as_array()?
            .iter()
            .find(|s| s["rank"].as_u64() == Some(rank))
            .and_then(|s| s["pid"].as_i64())
            .map(|p| p as i32),
        (_, 0) => now["server-pid"].as_i64().map(|p| p as i32),
        _ => rank1_pid(),
    }
}

/// Both ranks' command lines and rank 1's address, from a native trial.
type OldWay = ([Launched; 2], String);

/// One stop trial on `backend`; a native trial also returns both ranks'
/// command lines (for the old way).
fn stop_trial(setup: &Setup, backend: &str, trial: usize) -> (StopTrial, Option<OldWay>) {
    let rank = random(2) as u64;
    // A Ray worker's rank shows in its output from distributed init on.
    let stages = if backend == "ray" {
        &STAGES[2..]
    } else {
        &STAGES[..]
    };
    let target = stages[random(stages.len())];
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = setup.dir.join(format!("stop-{backend}-{trial}.log"));
    let base = if backend == "ray" { 170 } else { 140 } + trial as u8 * 2;
    let deadline = DEADLINE_S.to_string();
    let mut args: Vec<String> = vec![
        "--py-spy".into(),
        setup.py_spy.clone(),
        "--stacks-dir".into(),
        setup.dir.join("stacks").display().to_string(),
        "--health-param".into(),
        "on-stall=stop".into(),
        "--vllm-env".into(),
        "VLLM_CPU_KVCACHE_SPACE=1".into(),
    ];
    for stage in [
        "process-up",
        "imports-done",
        "distributed-init",
        "weights-loaded",
        "kv-cache-allocated",
        "api-up",
    ] {
        args.extend(["--stage-deadline".into(), format!("{stage}={deadline}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut local = setup.local(backend, base, (endpoints_port, free_port()), &log, &args);
    let reached = poll_until(
        &format!("rank {rank} at {target} ({backend})"),
        Duration::from_secs(400),
        || {
            let now = status(&endpoints)?;
            let stage = stage_of(&now, rank)?;
            let pid = rank_process(backend, &now, rank)?;
            (stage_index(&stage) >= stage_index(target)).then_some(pid)
        },
    );
    let commands = (backend == "native")
        .then(|| {
            let leader = status(&endpoints).and_then(|s| rank_process(backend, &s, 0))?;
            let both = [Launched::of(leader)?, Launched::of(rank1_pid()?)?];
            Some((both, format!("127.0.0.{}", base + 1)))
        })
        .flatten();
    // A native server leads its own process group; a Ray worker is one
    // process of its raylet's.
    let stop = |sig| {
        if backend == "ray" {
            signal(reached, sig)
        } else {
            signal_group(reached, sig)
        }
    };
    stop(Sig::STOP);
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    let stage = status(&endpoints)
        .and_then(|s| stage_of(&s, rank))
        .unwrap_or_default();
    eprintln!("trial {trial} ({backend}): rank {rank} stopped at {stage} (aimed at {target})");
    let mut named = None;
    let mut diagnosis = None;
    while stopped_at.elapsed() < Duration::from_secs(DEADLINE_S + 60) {
        if let Some(stall) = status(&endpoints).map(|s| s["stall"].clone())
            && stall.is_object()
        {
            diagnosis = Some(stopped_at.elapsed());
            named = Some((
                stall["rank"].as_u64().unwrap_or(u64::MAX),
                stall["stage"].as_str().unwrap_or_default().to_string(),
            ));
            eprintln!(
                "trial {trial} ({backend}): stall after {:.1} s: rank {} at {}, top frame {}",
                stopped_at.elapsed().as_secs_f64(),
                stall["rank"],
                stall["stage"],
                stall["top-frames"][0]
            );
            break;
        }
        if local.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop(Sig::CONT);
    finish(&mut local, Duration::from_secs(60));
    let trial = StopTrial {
        rank,
        stage,
        named,
        diagnosis,
    };
    (trial, commands)
}

/// The old way: both ranks' `vllm serve` started directly with the same
/// command lines and environment (as a LeaderWorkerSet recipe does), rank
/// 1 stopped a random 5-40 s after the start; whether anything (an exit,
/// a line of the leader's output naming rank 1 or its address) names it
/// within the stage deadline plus 10 s.
fn old_stop_trial(setup: &Setup, (commands, address): &OldWay, trial: usize) -> bool {
    let logs = [0, 1].map(|r| setup.dir.join(format!("old-stop-{trial}-rank{r}.log")));
    let mut leader = commands[0].spawn(&logs[0]);
    let mut member = commands[1].spawn(&logs[1]);
    let after = Duration::from_secs(5 + random(36) as u64);
    std::thread::sleep(after);
    let member_pid = member.id() as i32;
    signal_group(member_pid, Sig::STOP);
    let stopped_at = Instant::now();
    let seen_before = std::fs::metadata(&logs[0]).map_or(0, |m| m.len() as usize);
    let mut named = false;
    while stopped_at.elapsed() < Duration::from_secs(DEADLINE_S + 10) && !named {
        let text = std::fs::read(&logs[0]).unwrap_or_default();
        let since = String::from_utf8_lossy(text.get(seen_before..).unwrap_or_default());
        named = leader.try_wait().ok().flatten().is_some()
            || since.lines().any(|l| {
                l.contains("rank 1") || l.contains("rank=1") || l.contains(address.as_str())
            });
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "old way trial {trial}: rank 1 stopped {:.0} s after the start; named within {} s: {named}",
        after.as_secs_f64(),
        DEADLINE_S + 10
    );
    signal_group(member_pid, Sig::CONT);
    for child in [&mut leader, &mut member] {
        signal_group(child.id() as i32, Sig::TERM);
    }
    for child in [&mut leader, &mut member] {
        finish(child, Duration::from_secs(30));
        signal_group(child.id() as i32, Sig::KILL);
    }
    named
}

/// Stops `child` (SIGTERM, then waits up to `limit`, then SIGKILL).
fn finish(child: &mut Child, limit: Duration) {
    if child.try_wait().ok().flatten().is_none() {
        signal(child.id() as i32, Sig::TERM);
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every rank's vLLM fails with a ValueError: the starts until the
/// orchestrator stops on its own, and whether `/status` named the cause.
fn exception_trial(setup: &Setup, backend: &str, base: u8) -> (u64, bool, Duration) {
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = setup.dir.join(format!("exception-{backend}.log"));
    let started = Instant::now();
    let mut local = setup.local(
        backend,
        base,
        (endpoints_port, free_port()),
        &log,
        &[
            "--launch-param",
            "early-launch=false",
            "--vllm-env",
            "VLLM_CPU_KVCACHE_SPACE=4096",
        ],
    );
    let mut seen = serde_json::Value::Null;
    let mut failures = 0;
    while started.elapsed() < Duration::from_secs(600) {
        if let Some(now) = status(&endpoints) {
            let metrics = http_get(&endpoints, "/metrics");
            failures = metrics
                .lines()
                .find_map(|l| l.strip_prefix("orchestrator_server_startup_failures_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(failures, |v| v as u64);
            seen = now;
        }
        if local.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let took = started.elapsed();
    finish(&mut local, Duration::from_secs(60));
    let exception = seen["last-failure"]["exception"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let identical = seen["last-failure"]["identical"].as_u64().unwrap_or(0);
    let tries = failures.max(identical);
    eprintln!(
        "exception ({backend}): stopped after {tries} tries in {:.0} s; cause: {exception}",
        took.as_secs_f64()
    );
    (tries, exception.contains("Available memory on node"), took)
}

/// The namespace rank 1 runs in, its traffic to the leader dropped but
/// for the rendezvous (`endpoints`); removed on drop.
struct Namespace(&'static str);

impl Namespace {
    const HOST: &'static str = "10.231.0.1";
    const INSIDE: &'static str = "10.231.0.2";

    fn make(endpoints: u16) -> Self {
        let ns = Self("orch-bench-pf");
        let _ = Command::new("ip").args(["netns", "del", ns.0]).status();
        let _ = Command::new("ip").args(["link", "del", "orchpf0"]).status();
        let ip = |args: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(format!("ip {args}"))
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                fail(format!("`ip {args}` failed (the bench needs root)"));
            }
        };
        ip(&format!("netns add {}", ns.0));
        ip(&format!(
            "link add orchpf0 type veth peer name orchpf1 netns {}",
            ns.0
        ));
        ip(&format!("addr add {}/24 dev orchpf0", Self::HOST));
        ip("link set orchpf0 up");
        ip(&format!(
            "-n {} addr add {}/24 dev orchpf1",
            ns.0,
            Self::INSIDE
        ));
        ip(&format!("-n {} link set orchpf1 up", ns.0));
        ip(&format!("-n {} link set lo up", ns.0));
        // Out of the namespace: the rendezvous passes, other TCP is dropped.
        let tc = |args: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(format!("ip netns exec {} tc {args}", ns.0))
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                fail(format!("`tc {args}` failed"));
            }
        };
        // This kernel has no drop action: other TCP goes to a class of
        // 8 bit/s, where a SYN waits out every timeout (and the queue
        // drops the rest).
        tc("qdisc add dev orchpf1 root handle 1: htb default 1");
        tc("class add dev orchpf1 parent 1: classid 1:1 htb rate 1gbit");
        tc("class add dev orchpf1 parent 1: classid 1:2 htb rate 8bit ceil 8bit");
        tc(&format!(
            "filter add dev orchpf1 parent 1: protocol ip prio 1 u32 match ip dport {endpoints} 0xffff flowid 1:1"
        ));
        tc(
            "filter add dev orchpf1 parent 1: protocol ip prio 2 u32 match ip protocol 6 0xff flowid 1:2",
        );
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
        let _ = Command::new("ip").args(["link", "del", "orchpf0"]).status();
    }
}

/// Rank 1 in its own namespace, its preflight traffic dropped: whether the
/// preflight named rank 1 (and only it) before any server started, and
/// how long from the group's start to the failure. Without the preflight
/// (the old way): whether anything named rank 1 within `OLD_PREFLIGHT_S`
/// (vLLM's own group start waits on).
fn preflight_trial(setup: &Setup, preflight: bool) -> (bool, Duration) {
    let dir = setup.dir.join(if preflight {
        "preflight"
    } else {
        "old-preflight"
    });
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));
    let mut group = NativeGroup::new(&setup.binary, &dir, 0, 2, &setup.model, &setup.vllm);
    group.addresses = vec![Namespace::HOST.into(), Namespace::INSIDE.into()];
    group.early_launch = false;
    group.extra_toml = if preflight {
        format!(
            "[serve.preflight]\nmode = \"required\"\ntimeout-seconds = 10\npython = \"{}\"\n",
            setup.python().display()
        )
    } else {
        String::new()
    };
    let _ns = Namespace::make(group.endpoints);
    let started = Instant::now();
    let mut leader = group.start(0, 0);
    let log = dir.join("rank-1-0.log");
    let mut member = Command::new("ip")
        .args(["netns", "exec", "orch-bench-pf"])
        .arg(&group.binary)
        .args(["run", "--config"])
        .arg(group.config(1))
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap_or_else(|e| fail(e)))
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start rank 1 in the namespace: {e}")));
    let limit = Duration::from_secs(if preflight { 180 } else { OLD_PREFLIGHT_S });
    let deadline = Instant::now() + limit;
    while leader.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    finish(&mut leader, Duration::from_secs(30));
    finish(&mut member, Duration::from_secs(30));
    let text = std::fs::read_to_string(dir.join("rank-0-0.log")).unwrap_or_default();
    let rank1 = format!("rank 1 on {}", Namespace::INSIDE);
    let line = text
        .lines()
        .find(|l| l.contains("gang preflight failed:") || l.contains(&rank1))
        .unwrap_or_default()
        .to_string();
    let started_servers = text.contains("told every rank to start");
    eprintln!(
        "preflight {}: {line:?}; servers started: {started_servers}",
        if preflight { "on" } else { "off (old way)" }
    );
    let right = line.contains(&rank1) && !line.contains("rank 0 on") && !started_servers;
    (right, took)
}

/// One completion's latency.
fn completion_ms(server: &str) -> Option<f64> {
    let t = Instant::now();
    complete(server).ok()?;
    Some(t.elapsed().as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// After `/readyz` 200 on a clean native start: the first completion
/// against the steady state.
fn first_request(setup: &Setup) -> (f64, f64) {
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = setup.dir.join("first-request.log");
    let serve_port = free_port();
    let mut local = setup.local(
        "native",
        150,
        (endpoints_port, serve_port),
        &log,
        &["--vllm-env", "VLLM_CPU_KVCACHE_SPACE=1"],
    );
    poll_until("/readyz 200", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz")
            .contains("200 OK")
            .then_some(())
    });
    let server = format!("127.0.0.150:{serve_port}");
    let first = completion_ms(&server).unwrap_or(f64::NAN);
    let steady = median((0..5).filter_map(|_| completion_ms(&server)).collect());
    finish(&mut local, Duration::from_secs(60));
    (first, steady)
}

/// The old way: traffic as soon as the server's own `/health` answers
/// 200 (what a readiness probe on vLLM's port sees, as the KubeRay and
/// LeaderWorkerSet examples set it up), on the same group started the
/// same way; the first completion then against the steady state.
fn old_first_request(setup: &Setup) -> (f64, f64) {
    let endpoints_port = free_port();
    let serve_port = free_port();
    let log = setup.dir.join("old-first-request.log");
    let mut local = setup.local(
        "native",
        152,
        (endpoints_port, serve_port),
        &log,
        &["--vllm-env", "VLLM_CPU_KVCACHE_SPACE=1"],
    );
    let server = format!("127.0.0.152:{serve_port}");
    poll_until("the server's /health 200", Duration::from_secs(400), || {
        http_get(&server, "/health")
            .contains("200 OK")
            .then_some(())
    });
    let first = completion_ms(&server).unwrap_or(f64::NAN);
    let steady = median((0..5).filter_map(|_| completion_ms(&server)).collect());
    finish(&mut local, Duration::from_secs(60));
    (first, steady)
}

fn main() {
    let binary: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: bench_startup ORCHESTRATOR_BINARY"))
        .into();
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(e));
    let setup = Setup {
        binary,
        vllm: required_env("ORCHESTRATOR_VLLM_BIN", "cargo xtask bench startup sets it"),
        model: required_env(
            "ORCHESTRATOR_TINY_MODEL",
            "cargo xtask bench startup sets it",
        ),
        ray: required_env("ORCHESTRATOR_RAY_BIN", "cargo xtask bench startup sets it"),
        py_spy: required_env(
            "ORCHESTRATOR_PY_SPY_BIN",
            "cargo xtask bench startup sets it",
        ),
        dir: dir.path().to_path_buf(),
    };
    let trials: usize = std::env::var("BENCH_STARTUP_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let (preflight_right, preflight_s) = preflight_trial(&setup, true);
    let (old_preflight_right, _) = preflight_trial(&setup, false);
    let mut right = 0;
    let mut diagnosis_max = 0.0f64;
    let mut old_way = None;
    let mut per_backend = Vec::new();
    for backend in ["native", "ray"] {
        let mut backend_right = 0;
        for trial in 0..trials {
            let (t, commands) = stop_trial(&setup, backend, trial);
            old_way = old_way.or(commands);
            let ok = t.named.as_ref() == Some(&(t.rank, t.stage.clone()));
            eprintln!(
                "trial {trial} ({backend}): stopped rank {} at {}; named {:?} ({})",
                t.rank,
                t.stage,
                t.named,
                if ok { "right" } else { "WRONG" }
            );
            backend_right += usize::from(ok);
            diagnosis_max =
                diagnosis_max.max(t.diagnosis.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        }
        right += backend_right;
        per_backend.push(format!("{backend} {backend_right}/{trials}"));
    }
    let old_way = old_way.unwrap_or_else(|| fail("no native trial gave its command lines"));
    let old_named = (0..trials)
        .filter(|trial| old_stop_trial(&setup, &old_way, *trial))
        .count();
    let (native_tries, native_cause, _) = exception_trial(&setup, "native", 160);
    let (ray_tries, ray_cause, _) = exception_trial(&setup, "ray", 162);
    let (first, steady) = first_request(&setup);
    let (old_first, old_steady) = old_first_request(&setup);
    let stops = 2 * trials;
    let share = right as f64 / stops as f64;
    println!(
        "stop: {right}/{stops} right ({}), diagnosis at most {diagnosis_max:.1} s (deadline {DEADLINE_S} s + 10 s = {} s); old way: {old_named}/{trials} named by anything within {} s",
        per_backend.join(", "),
        DEADLINE_S + 10,
        DEADLINE_S + 10
    );
    println!(
        "exception: native {native_tries} tries (cause in /status: {native_cause}), ray {ray_tries} tries (cause in /status: {ray_cause})"
    );
    println!(
        "preflight: rank 1's traffic dropped in its namespace: named right: {preflight_right}, failed {:.1} s after the start; old way (no preflight): named within {OLD_PREFLIGHT_S} s: {old_preflight_right}",
        preflight_s.as_secs_f64()
    );
    println!("first request after /readyz: {first:.0} ms; steady state {steady:.0} ms");
    println!(
        "old way, first request after the server's /health: {old_first:.0} ms; steady state {old_steady:.0} ms"
    );
    println!(
        "BENCH startup trials={stops} right_rank_stage={share:.2} diagnosis_max_s={diagnosis_max:.1} crashloop_tries={} first_request_ratio={:.2} old_right_rank_stage={:.2} old_first_request_ratio={:.2} preflight_named={} old_preflight_named={} preflight_s={:.1} native_crashloop_tries={native_tries} ray_crashloop_tries={ray_tries} cause_in_status={}",
        native_tries.max(ray_tries),
        first / steady,
        old_named as f64 / trials as f64,
        old_first / old_steady,
        u8::from(preflight_right),
        u8::from(old_preflight_right),
        preflight_s.as_secs_f64(),
        u8::from(native_cause && ray_cause),
    );
}
