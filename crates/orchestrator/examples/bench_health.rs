//! `cargo xtask bench health`: on a real local Ray cluster (a head and two
//! workers, each its own `orchestrator run`), how soon a GPU fault on a
//! worker reaches the head, and what the probes cost.
//!
//! The workers' GPUs come from the NVML stand-in library
//! (`crates/nvml-standin`), loaded as the driver's would be. One worker
//! checks itself (node health on, default 1 s interval), the other does
//! not (`node-health.enabled = false`): the old way, side by side.
//!
//! - `fault_to_head_ms`: a critical XID (79) written to the stand-in ->
//!   the head's `/status` shows the worker unhealthy. NVML delivers XIDs as
//!   events, so the probe sees it at once; this is probe -> head.
//! - `ecc_to_head_ms`: the median over rounds of an uncorrectable ECC
//!   error written -> the head shows unhealthy; ECC counters are read at
//!   the probe interval, so this includes up to one interval.
//! - `probe_cpu_percent`: the checking worker's CPU minus the other's, in
//!   percent of one core, over the same window.
//!
//! Usage: bench_health ORCHESTRATOR_BINARY (with ORCHESTRATOR_RAY_BIN set).
//! BENCH_ROUNDS (default 5) and BENCH_CPU_SECONDS (default 30) tune it.

use orchestrator_test_support::{
    Sig, TestNode, cpu_seconds_of, kill_descendants, nvml_standin_library, signal, status,
};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HEAD: &str = "127.0.0.110";
const CHECKED: &str = "127.0.0.111";
const UNCHECKED: &str = "127.0.0.112";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A new content the stand-in sees (it re-reads on a new mtime).
fn inject(path: &Path, text: &str) -> Result<Instant, String> {
    std::thread::sleep(Duration::from_millis(15));
    write(path, text)?;
    Ok(Instant::now())
}

/// What every node of the bench changes from its defaults: a low
/// open-file floor (this machine's limits).
fn bench_node(c: &mut orchestrator_phases::config::Config) {
    c.policies
        .node_health
        .params
        .insert("min-open-files".into(), "1024".into());
}

fn spawn(bin: &str, config: &Path, state: Option<&Path>) -> Result<Child, String> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"])
        .arg(config)
        .env(
            "ORCHESTRATOR_LOG",
            std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("BENCH_LOG_DIR") {
            Some(dir) => std::fs::File::create(
                std::path::Path::new(&dir).join(config.file_name().unwrap_or_default()),
            )
            .map_or_else(|_| Stdio::null(), Stdio::from),
            None => Stdio::null(),
        });
    if let Some(state) = state {
        cmd.env("ORCHESTRATOR_NVML_LIBRARY", nvml_standin_library())
            .env("NVML_STANDIN_STATE", state);
    }
    cmd.spawn().map_err(|e| format!("cannot start {bin}: {e}"))
}

/// The head's view of node `ip`: (state, reason).
fn node_state(endpoints: &str, ip: &str) -> Option<(String, String)> {
    let s = status(endpoints)?;
    s["node-health"].as_array()?.iter().find_map(|n| {
        (n["address"] == ip).then(|| {
            (
                n["state"].as_str().unwrap_or("").to_string(),
                n["reason"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

/// Polls the head every 5 ms until node `ip` is in `state`.
fn until_state(endpoints: &str, ip: &str, state: &str, limit: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    loop {
        if node_state(endpoints, ip).is_some_and(|(s, _)| s == state) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the head never showed {ip} {state} within {limit:?} (last: {:?})",
                node_state(endpoints, ip)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let code = match bench() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench health failed: {e}");
            1
        }
    };
    kill_descendants();
    std::process::exit(code);
}

fn bench() -> Result<(), String> {
    let bin = std::env::args()
        .nth(1)
        .ok_or("usage: bench_health ORCHESTRATOR_BINARY")?;
    let ray = std::env::var("ORCHESTRATOR_RAY_BIN").map_err(|_| "set ORCHESTRATOR_RAY_BIN")?;
    let rounds = env_u64("BENCH_ROUNDS", 5).max(1);
    let cpu_window = Duration::from_secs(env_u64("BENCH_CPU_SECONDS", 30).max(5));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let head = TestNode::head_using(HEAD, &ray).with(|c| {
        bench_node(c);
        c.ray.num_gpus = Some(0.0);
        c.ray.temp_dir = Some(format!("/tmp/ray-bench-health-{}", c.ray.gcs_port).into());
        c.cluster.nodes = Some(3);
        c.cluster.wait_timeout_seconds = 300;
    });
    let endpoints = head.endpoints();
    let head_config = head.write(dir.path(), "head.toml");
    let worker = |ip: &str, enabled: bool, name: &str| {
        TestNode::worker_using(ip, &head.gcs_address(), &ray)
            .with(|c| {
                bench_node(c);
                c.ray.num_gpus = Some(1.0);
                c.ray.gcs_wait_seconds = 120;
                c.node_health.enabled = enabled;
                c.node_health.unhealthy_grace_seconds = 3600;
            })
            .write(dir.path(), name)
    };
    let checked_config = worker(CHECKED, true, "w1.toml");
    let unchecked_config = worker(UNCHECKED, false, "w2.toml");
    let healthy =
        r#"{"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "ecc": true}]}"#;
    let (state1, state2) = (
        dir.path().join("nvml-1.json"),
        dir.path().join("nvml-2.json"),
    );
    write(&state1, healthy)?;
    write(&state2, healthy)?;

    let mut children = vec![spawn(&bin, &head_config, None)?];
    let checked = spawn(&bin, &checked_config, Some(&state1))?;
    // The second worker starts once the first has joined: two `ray start`
    // at the same instant on one host can collide on a port (the raylet
    // aborts with `bind: Address already in use`).
    let joined = Instant::now() + Duration::from_secs(120);
    while status(&endpoints).is_none_or(|s| s["nodes-alive"].as_u64().unwrap_or(0) < 2) {
        if Instant::now() > joined {
            return Err("the first worker did not join within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let unchecked = spawn(&bin, &unchecked_config, Some(&state2))?;
    let (checked_pid, unchecked_pid) = (checked.id(), unchecked.id());
    children.push(checked);
    children.push(unchecked);
    let result = measure(
        &endpoints,
        &state1,
        rounds,
        cpu_window,
        (checked_pid, unchecked_pid),
    );
    for child in children.iter().rev() {
        signal(child.id() as i32, Sig::TERM);
    }
    for mut child in children.into_iter().rev() {
        let _ = child.wait();
    }
    result
}

fn measure(
    endpoints: &str,
    state: &Path,
    rounds: u64,
    cpu_window: Duration,
    (checked_pid, unchecked_pid): (u32, u32),
) -> Result<(), String> {
    let ready_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready =
            status(endpoints).is_some_and(|s| s["phase"] == "serve" && s["nodes-alive"] == 3);
        if ready && node_state(endpoints, CHECKED).is_some_and(|(s, _)| s == "healthy") {
            break;
        }
        if Instant::now() > ready_deadline {
            return Err(format!(
                "the cluster never became ready: {:?}",
                status(endpoints)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("cluster ready: 3 nodes, {CHECKED} checks itself, {UNCHECKED} does not");

    // CPU while nothing happens: the probes' steady cost.
    std::thread::sleep(Duration::from_secs(2));
    let before = (cpu_seconds_of(checked_pid), cpu_seconds_of(unchecked_pid));
    let started = Instant::now();
    std::thread::sleep(cpu_window);
    let after = (cpu_seconds_of(checked_pid), cpu_seconds_of(unchecked_pid));
    let window = started.elapsed().as_secs_f64();
    let percent = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) => 100.0 * (a - b) / window,
        _ => f64::NAN,
    };
    let checked_cpu = percent(before.0, after.0);
    let unchecked_cpu = percent(before.1, after.1);

    let healthy =
        r#"{"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "ecc": true}]}"#;
    let ecc = r#"{"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "ecc": true, "ecc_uncorrected": 1}]}"#;
    let mut ecc_ms = Vec::new();
    for round in 1..=rounds {
        let at = inject(state, ecc)?;
        let seen = until_state(endpoints, CHECKED, "unhealthy", Duration::from_secs(10))?;
        let ms = seen.duration_since(at).as_secs_f64() * 1000.0;
        eprintln!("round {round}: uncorrectable ECC error -> head sees unhealthy in {ms:.0} ms");
        ecc_ms.push(ms);
        inject(state, healthy)?;
        until_state(endpoints, CHECKED, "healthy", Duration::from_secs(10))?;
    }
    let xid = r#"{"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "ecc": true}], "xids": [{"gpu": 0, "xid": 79}]}"#;
    let at = inject(state, xid)?;
    let seen = until_state(endpoints, CHECKED, "unhealthy", Duration::from_secs(10))?;
    let xid_ms = seen.duration_since(at).as_secs_f64() * 1000.0;
    let reason = node_state(endpoints, CHECKED)
        .map(|(_, r)| r)
        .unwrap_or_default();
    eprintln!("XID 79 -> head sees unhealthy in {xid_ms:.0} ms: {reason}");

    println!();
    println!("                                   node health on   off (old way)");
    println!(
        "worker orchestrator CPU, % of a core  {checked_cpu:>10.2}   {unchecked_cpu:>10.2}   ({:.0} s window)",
        window
    );
    println!("GPU fault reaches the head          {xid_ms:>8.0} ms       never");
    println!();
    println!(
        "BENCH health fault_to_head_ms={xid_ms:.0} ecc_to_head_ms={:.0} probe_cpu_percent={:.2} worker_cpu_percent={checked_cpu:.2} baseline_cpu_percent={unchecked_cpu:.2} probe_interval_ms=1000 follow_interval_ms=250",
        median(ecc_ms),
        (checked_cpu - unchecked_cpu).max(0.0)
    );
    Ok(())
}
