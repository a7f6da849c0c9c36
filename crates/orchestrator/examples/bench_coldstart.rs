//! `cargo xtask bench coldstart`: a cold start of a three-node native
//! group serving a 1.1 GB random-weight model (made offline by
//! `python/make_tiny_model.py --large`) with real vLLM (the CPU build,
//! tensor parallel 3), its weights fetched by `[serve.weights]` from a
//! real nginx in a network namespace of its own whose link is held to 50
//! MB/s (`tc` htb), each rank's cache mounted at the same path in a mount
//! namespace of the rank's (as on three machines).
//!
//! - **new way**: the leader fetches from the origin, the other ranks
//!   from the group (`share = true`).
//! - **old way**: every rank fetches on its own from the same origin
//!   (`share = false`: what a per-pod download does).
//! - **alone**: one node's fetch from the origin with nobody else, with
//!   the orchestrator's fetcher.
//! - **restarts**: the new way's group started again with its compile
//!   caches kept (`[serve.compile-cache]`: a hit), then with them removed
//!   (a miss), the weights kept both times; vLLM compiles in every run
//!   (torch.compile with Inductor: the CPU build does, no
//!   `--enforce-eager`).
//!
//! Each way prints the bytes the origin served against the model's size,
//! the seconds until every rank held the weights against one node alone,
//! and the first completion after the start. Last line: `BENCH coldstart
//! origin_ratio=<x> old_origin_ratio=<x> all_nodes_ratio=<x>
//! old_all_nodes_ratio=<x> first_completion_s=<s> old_first_completion_s=<s>
//! compile_cache_restart_ratio=<x> compile_restart_s=<s>
//! no_compile_cache_restart_s=<s>`.
//!
//! Usage: bench_coldstart ORCHESTRATOR_BINARY (ORCHESTRATOR_VLLM_BIN,
//! ORCHESTRATOR_NGINX_BIN, ORCHESTRATOR_LARGE_MODEL set). Needs root.

use orchestrator_test_support::{
    NativeGroup, Nginx, Sig, complete, folder_bytes, http_get, required_env, signal, status,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The origin's link, Mbit/s (50 MB/s).
const ORIGIN_MBIT: u64 = 400;
const NAMESPACE: &str = "orch-bench-origin";
const HOST: &str = "10.232.0.1";
const ORIGIN: &str = "10.232.0.2";
const ORIGIN_PORT: u16 = 8080;
const RANKS: u32 = 3;

/// The origin's nginx, stopped by [`fail`] (an exit runs no destructor).
static ORIGIN_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    let pid = ORIGIN_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid != 0 {
        signal(pid as i32, Sig::TERM);
    }
    drop(OriginNet);
    std::process::exit(1)
}

fn sh(command: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail(format!("`{command}` failed (the bench needs root)"));
    }
}

/// The origin's network namespace, its link held to [`ORIGIN_MBIT`];
/// removed on drop.
struct OriginNet;

impl OriginNet {
    fn make() -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", NAMESPACE])
            .status();
        let _ = Command::new("ip").args(["link", "del", "orchcs0"]).status();
        sh(&format!("ip netns add {NAMESPACE}"));
        sh(&format!(
            "ip link add orchcs0 type veth peer name orchcs1 netns {NAMESPACE}"
        ));
        sh(&format!("ip addr add {HOST}/24 dev orchcs0"));
        sh("ip link set orchcs0 up");
        sh(&format!(
            "ip -n {NAMESPACE} addr add {ORIGIN}/24 dev orchcs1"
        ));
        sh(&format!("ip -n {NAMESPACE} link set orchcs1 up"));
        sh(&format!("ip -n {NAMESPACE} link set lo up"));
        // What leaves the origin: at most the link's rate, shared by every
        // connection.
        sh(&format!(
            "ip netns exec {NAMESPACE} tc qdisc add dev orchcs1 root handle 1: htb default 1"
        ));
        sh(&format!(
            "ip netns exec {NAMESPACE} tc class add dev orchcs1 parent 1: classid 1:1 htb rate {ORIGIN_MBIT}mbit ceil {ORIGIN_MBIT}mbit"
        ));
        Self
    }
}

impl Drop for OriginNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", NAMESPACE])
            .status();
        let _ = Command::new("ip").args(["link", "del", "orchcs0"]).status();
    }
}

/// What one start measured.
#[derive(Debug)]
struct Run {
    origin_bytes: u64,
    all_nodes_s: f64,
    first_completion_s: f64,
    /// The leader's `/status` `compile-cache` state, when it is on.
    compile_cache: Option<String>,
}

/// A group of [`RANKS`], each node's folder (weights, compile cache)
/// mounted at the same path: `share` on or off. vLLM compiles (no
/// `--enforce-eager`) into `[serve.compile-cache]`'s folder, empty at
/// first (never vLLM's default one, which the host's other runs share).
fn group(binary: &Path, vllm: &str, dir: &Path, share: bool) -> NativeGroup {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(e));
    let mut group = NativeGroup::new(binary, dir, 230, RANKS, "bench/large", vllm);
    group.early_launch = false;
    group.enforce_eager = false;
    let node = dir.join("node");
    group.rank_mount = Some((dir.join("rank-{rank}-node"), node.clone()));
    group.extra_toml = format!(
        "[serve.weights]\norigin = \"directory\"\nurl = \"http://{ORIGIN}:{ORIGIN_PORT}/models/large/\"\nrepo = \"bench/large\"\ncache-dir = \"{}\"\nshare = {share}\n[serve.compile-cache]\nenabled = true\ndir = \"{}\"\n",
        node.join("weights").display(),
        node.join("compile").display()
    );
    group
}

/// One start of `group` (its `run`-th), until the first completion.
fn group_run(group: &NativeGroup, run: u32, nginx: &Nginx, what: &str) -> Run {
    let before = nginx.file_bytes();
    let started = Instant::now();
    let mut ranks: Vec<_> = (0..RANKS).map(|r| group.start(r, run)).collect();
    let mut held: Vec<Option<f64>> = vec![None; RANKS as usize];
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while first.is_none() && Instant::now() < deadline {
        for (rank, at) in held.iter_mut().enumerate() {
            if at.is_none()
                && status(&group.endpoints_of(rank as u32))
                    .is_some_and(|s| s["weights"]["state"] == "done")
            {
                *at = Some(started.elapsed().as_secs_f64());
                eprintln!(
                    "{what}: rank {rank} holds the weights at {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if held.iter().all(Option::is_some)
            && http_get(&group.endpoints_of(0), "/readyz").contains("200 OK")
            && complete(&group.server()).is_ok()
        {
            first = Some(started.elapsed().as_secs_f64());
        }
        if ranks
            .iter_mut()
            .any(|r| r.try_wait().ok().flatten().is_some())
        {
            stop(&mut ranks);
            fail(format!(
                "{what}: a rank exited; see {}",
                group.dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let compile_cache = status(&group.endpoints_of(0))
        .and_then(|s| s["compile-cache"]["state"].as_str().map(str::to_string));
    // As a group that served a while: every rank has offered its cache.
    let settle = Instant::now() + Duration::from_secs(120);
    while Instant::now() < settle
        && !(0..RANKS).all(|r| {
            status(&group.endpoints_of(r)).is_some_and(|s| !s["compile-cache"]["offered"].is_null())
        })
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    stop(&mut ranks);
    let Some(first) = first else {
        fail(format!(
            "{what}: no completion within 900 s; see {}",
            group.dir.display()
        ))
    };
    eprintln!("{what}: first completion at {first:.1} s (compile cache: {compile_cache:?})");
    Run {
        origin_bytes: nginx.file_bytes() - before,
        all_nodes_s: held.iter().flatten().fold(0.0, |a: f64, b| a.max(*b)),
        first_completion_s: first,
        compile_cache,
    }
}

/// The group started again with its compile caches, then again without
/// them (the weights kept both times): the two runs.
fn restarts(group: &NativeGroup, nginx: &Nginx) -> (Run, Run) {
    let kept = group_run(group, 1, nginx, "restart with the compile cache");
    if kept.compile_cache.as_deref() != Some("hit") {
        fail(format!(
            "the restart did not hit the compile cache: {:?}",
            kept.compile_cache
        ));
    }
    for rank in 0..RANKS {
        let cache = group.dir.join(format!("rank-{rank}-node/compile"));
        std::fs::remove_dir_all(&cache)
            .unwrap_or_else(|e| fail(format!("{}: {e}", cache.display())));
    }
    let cold = group_run(group, 2, nginx, "restart without it");
    if cold.compile_cache.as_deref() != Some("miss") {
        fail(format!(
            "the restart without the cache did not miss: {:?}",
            cold.compile_cache
        ));
    }
    (kept, cold)
}

/// Stops every rank (SIGTERM: each stops its own server) and waits.
fn stop(ranks: &mut [std::process::Child]) {
    for rank in ranks.iter() {
        signal(rank.id() as i32, Sig::TERM);
    }
    for rank in ranks.iter_mut() {
        let _ = rank.wait();
    }
}

/// One node's fetch from the origin, with nobody else.
fn alone(dir: &Path) -> f64 {
    use orchestrator_weights::{FetchSettings, Fetcher, Origin, OriginSpec, Role};
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(e));
    runtime.block_on(async {
        let origin = Origin::new(
            OriginSpec::Directory {
                url: format!("http://{ORIGIN}:{ORIGIN_PORT}/models/large/"),
                name: "bench/large".into(),
                revision: None,
                files: vec![],
                token_env: None,
            },
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| fail(e));
        let settings = FetchSettings {
            cache: dir.join("alone-cache"),
            chunk_bytes: 16 << 20,
            parallel: 4,
            peer_wait: Duration::ZERO,
            stall: Duration::from_secs(30),
        };
        let started = Instant::now();
        Fetcher::new(origin, settings, Role::Seed)
            .run()
            .await
            .unwrap_or_else(|e| fail(e));
        started.elapsed().as_secs_f64()
    })
}

fn main() {
    let binary: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: bench_coldstart ORCHESTRATOR_BINARY"))
        .into();
    let vllm = required_env(
        "ORCHESTRATOR_VLLM_BIN",
        "cargo xtask bench coldstart sets it",
    );
    let model: PathBuf = required_env(
        "ORCHESTRATOR_LARGE_MODEL",
        "cargo xtask bench coldstart sets it",
    )
    .into();
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(e));
    let size = folder_bytes(&model);
    let root = dir.path().join("origin");
    std::fs::create_dir_all(root.join("models")).unwrap_or_else(|e| fail(e));
    std::os::unix::fs::symlink(&model, root.join("models/large")).unwrap_or_else(|e| fail(e));
    let _net = OriginNet::make();
    let nginx = Nginx::start_at(
        &dir.path().join("nginx"),
        &root,
        (ORIGIN, ORIGIN_PORT),
        "0",
        &["ip", "netns", "exec", NAMESPACE],
    );
    if let Some(pid) = nginx.pid() {
        ORIGIN_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    }
    eprintln!(
        "model: {} MB; origin link: {} MB/s",
        size / 1_000_000,
        ORIGIN_MBIT / 8
    );
    let alone_s = alone(dir.path());
    eprintln!("one node alone: {alone_s:.1} s");
    let new_group = group(&binary, &vllm, &dir.path().join("new"), true);
    let new = group_run(&new_group, 0, &nginx, "new way");
    let (kept, cold) = restarts(&new_group, &nginx);
    let old_group = group(&binary, &vllm, &dir.path().join("old"), false);
    let old = group_run(&old_group, 0, &nginx, "old way");
    let ratio = |bytes: u64| bytes as f64 / size as f64;
    println!(
        "origin served: {:.2} x the model (old way {:.2} x); every node held it after {:.1} s against {alone_s:.1} s alone (old way {:.1} s); first completion {:.1} s after the start (old way {:.1} s)",
        ratio(new.origin_bytes),
        ratio(old.origin_bytes),
        new.all_nodes_s,
        old.all_nodes_s,
        new.first_completion_s,
        old.first_completion_s
    );
    println!(
        "restart to first completion: {:.1} s with the compile cache, {:.1} s without",
        kept.first_completion_s, cold.first_completion_s
    );
    println!(
        "BENCH coldstart origin_ratio={:.2} old_origin_ratio={:.2} all_nodes_ratio={:.2} old_all_nodes_ratio={:.2} first_completion_s={:.1} old_first_completion_s={:.1} compile_cache_restart_ratio={:.2} compile_restart_s={:.1} no_compile_cache_restart_s={:.1}",
        ratio(new.origin_bytes),
        ratio(old.origin_bytes),
        new.all_nodes_s / alone_s,
        old.all_nodes_s / alone_s,
        new.first_completion_s,
        old.first_completion_s,
        kept.first_completion_s / cold.first_completion_s,
        kept.first_completion_s,
        cold.first_completion_s
    );
}
