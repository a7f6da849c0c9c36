//! `cargo xtask bench startup`: startup faults on this machine with real
//! vLLM (the CPU build), on the native backend and behind real Ray, side
//! by side with the old way (each rank's `vllm serve` started directly).
//!
//! - **stop**: a rank (0 or 1, at random) is SIGSTOPped once it reached a
//!   start stage picked at random (process up to weights loaded); every
//!   stage's deadline is `DEADLINE_S`. A trial is right when the stall the
//!   orchestrator reports names that rank and the stage it was stopped in;
//!   its diagnosis time runs from the SIGSTOP to the stall in `/status`.
//!   The old way: rank 1's `vllm serve` stopped the same way; nothing
//!   names it within the deadline plus 10 s (no exit, no line naming it).
//! - **exception**: every rank's vLLM fails its start with a ValueError
//!   (the KV cache asks for more memory than the machine has); the tries
//!   until the orchestrator stops (the default health policy's
//!   `stop-after-identical-failures`), and whether `/status` holds the
//!   exception; native and Ray.
//! - **preflight**: rank 1 runs in a network namespace of its own whose
//!   traffic other than the rendezvous is held at 8 bit/s (`tc` htb: this
//!   kernel has no drop action), so it never arrives; the gang
//!   preflight (required) must name rank 1 before any server starts.
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

/// A small random number from the clock.
fn random(below: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos() as usize);
    (nanos / 1000) % below
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

/// One stop trial on the native backend.
fn stop_trial(setup: &Setup, trial: usize) -> StopTrial {
    let rank = random(2) as u64;
    let target = STAGES[random(STAGES.len())];
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = setup.dir.join(format!("stop-{trial}.log"));
    let base = 140 + trial as u8 * 2;
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
    let mut local = setup.local("native", base, (endpoints_port, free_port()), &log, &args);
    // The rank's processes once it reached the stage.
    let reached = poll_until(
        &format!("rank {rank} at {target}"),
        Duration::from_secs(300),
        || {
            let now = status(&endpoints)?;
            let stage = stage_of(&now, rank)?;
            let pid = if rank == 0 {
                now["server-pid"].as_i64().map(|p| p as i32)
            } else {
                rank1_pid()
            }?;
            (stage_index(&stage) >= stage_index(target)).then_some(pid)
        },
    );
    signal_group(reached, Sig::STOP);
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    let stage = status(&endpoints)
        .and_then(|s| stage_of(&s, rank))
        .unwrap_or_default();
    eprintln!("trial {trial}: rank {rank} stopped at {stage} (aimed at {target})");
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
                "trial {trial}: stall after {:.1} s: rank {} at {}, top frame {}",
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
    signal_group(reached, Sig::CONT);
    finish(&mut local, Duration::from_secs(60));
    StopTrial {
        rank,
        stage,
        named,
        diagnosis,
    }
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
/// how long from the group's start to the failure.
fn preflight_trial(setup: &Setup) -> (bool, Duration) {
    let dir = setup.dir.join("preflight");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));
    let mut group = NativeGroup::new(&setup.binary, &dir, 0, 2, &setup.model, &setup.vllm);
    group.addresses = vec![Namespace::HOST.into(), Namespace::INSIDE.into()];
    group.early_launch = false;
    group.extra_toml = format!(
        "[serve.preflight]\nmode = \"required\"\ntimeout-seconds = 10\npython = \"{}\"\n",
        setup.python().display()
    );
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
    let deadline = Instant::now() + Duration::from_secs(180);
    while leader.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    finish(&mut leader, Duration::from_secs(30));
    finish(&mut member, Duration::from_secs(30));
    let text = std::fs::read_to_string(dir.join("rank-0-0.log")).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("gang preflight failed:"))
        .unwrap_or_default()
        .to_string();
    eprintln!("preflight: {line}");
    let right = line.contains(&format!("rank 1 on {}", Namespace::INSIDE))
        && !line.contains("rank 0 on")
        && !text.contains("told every rank to start");
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
    let (preflight_right, preflight_s) = preflight_trial(&setup);
    let mut right = 0;
    let mut diagnosis_max = 0.0f64;
    for trial in 0..trials {
        let t = stop_trial(&setup, trial);
        let ok = t.named.as_ref() == Some(&(t.rank, t.stage.clone()));
        eprintln!(
            "trial {trial}: stopped rank {} at {}; named {:?} ({})",
            t.rank,
            t.stage,
            t.named,
            if ok { "right" } else { "WRONG" }
        );
        if ok {
            right += 1;
        }
        diagnosis_max = diagnosis_max.max(t.diagnosis.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    }
    let (native_tries, native_cause, _) = exception_trial(&setup, "native", 160);
    let (ray_tries, ray_cause, _) = exception_trial(&setup, "ray", 162);
    let (first, steady) = first_request(&setup);
    let (old_first, old_steady) = old_first_request(&setup);
    let share = right as f64 / trials as f64;
    println!(
        "stop: {right}/{trials} right, diagnosis at most {diagnosis_max:.1} s (deadline {DEADLINE_S} s + 10 s = {} s)",
        DEADLINE_S + 10
    );
    println!(
        "exception: native {native_tries} tries (cause in /status: {native_cause}), ray {ray_tries} tries (cause in /status: {ray_cause})"
    );
    println!(
        "preflight: rank 1's traffic dropped in its namespace: named right: {preflight_right}, failed {:.1} s after the start",
        preflight_s.as_secs_f64()
    );
    println!("first request after /readyz: {first:.0} ms; steady state {steady:.0} ms");
    println!(
        "old way, first request after the server's /health: {old_first:.0} ms; steady state {old_steady:.0} ms"
    );
    println!(
        "BENCH startup trials={trials} right_rank_stage={share:.2} diagnosis_max_s={diagnosis_max:.1} crashloop_tries={} first_request_ratio={:.2} old_first_request_ratio={:.2} preflight_named={} preflight_s={:.1} native_crashloop_tries={native_tries} ray_crashloop_tries={ray_tries} cause_in_status={}",
        native_tries.max(ray_tries),
        first / steady,
        old_first / old_steady,
        u8::from(preflight_right),
        preflight_s.as_secs_f64(),
        u8::from(native_cause && ray_cause),
    );
}
