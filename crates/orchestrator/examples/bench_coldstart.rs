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
//!
//! Each way prints the bytes the origin served against the model's size,
//! the seconds until every rank held the weights against one node alone,
//! and the first completion after the start. Last line: `BENCH coldstart
//! origin_ratio=<x> old_origin_ratio=<x> all_nodes_ratio=<x>
//! old_all_nodes_ratio=<x> first_completion_s=<s> old_first_completion_s=<s>
//! compile_cache_restart_ratio=<x or not-built>`.
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

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
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

/// What one way measured.
#[derive(Debug)]
struct Run {
    origin_bytes: u64,
    all_nodes_s: f64,
    first_completion_s: f64,
}

/// One cold start of the group: fresh caches, `share` on or off.
fn group_run(binary: &Path, vllm: &str, dir: &Path, nginx: &Nginx, share: bool) -> Run {
    let way = if share { "new" } else { "old" };
    let dir = dir.join(way);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));
    let before = nginx.file_bytes();
    let mut group = NativeGroup::new(binary, &dir, 230, RANKS, "bench/large", vllm);
    group.early_launch = false;
    let cache = dir.join("weights-cache");
    group.rank_mount = Some((dir.join("rank-{rank}-cache"), cache.clone()));
    group.extra_toml = format!(
        "[serve.weights]\norigin = \"directory\"\nurl = \"http://{ORIGIN}:{ORIGIN_PORT}/models/large/\"\nrepo = \"bench/large\"\ncache-dir = \"{}\"\nshare = {share}\n",
        cache.display()
    );
    let started = Instant::now();
    let mut ranks: Vec<_> = (0..RANKS).map(|r| group.start(r, 0)).collect();
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
                    "{way} way: rank {rank} holds the weights at {:.1} s",
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
            fail(format!("{way} way: a rank exited; see {}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut ranks);
    let Some(first) = first else {
        fail(format!(
            "{way} way: no completion within 900 s; see {}",
            dir.display()
        ))
    };
    Run {
        origin_bytes: nginx.file_bytes() - before,
        all_nodes_s: held.iter().flatten().fold(0.0, |a: f64, b| a.max(*b)),
        first_completion_s: first,
    }
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
    eprintln!(
        "model: {} MB; origin link: {} MB/s",
        size / 1_000_000,
        ORIGIN_MBIT / 8
    );
    let alone_s = alone(dir.path());
    eprintln!("one node alone: {alone_s:.1} s");
    let new = group_run(&binary, &vllm, dir.path(), &nginx, true);
    eprintln!("new way: {new:?}");
    let old = group_run(&binary, &vllm, dir.path(), &nginx, false);
    eprintln!("old way: {old:?}");
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
        "BENCH coldstart origin_ratio={:.2} old_origin_ratio={:.2} all_nodes_ratio={:.2} old_all_nodes_ratio={:.2} first_completion_s={:.1} old_first_completion_s={:.1} compile_cache_restart_ratio=not-built",
        ratio(new.origin_bytes),
        ratio(old.origin_bytes),
        new.all_nodes_s / alone_s,
        old.all_nodes_s / alone_s,
        new.first_completion_s,
        old.first_completion_s
    );
}
