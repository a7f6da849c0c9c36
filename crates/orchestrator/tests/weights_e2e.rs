//! `[serve.weights]` and `[serve.compile-cache]` with real vLLM (the CPU
//! build): every node has its own cache mounted at the same path (a mount
//! namespace per node, as on separate machines), the tiny model served by
//! a real nginx as a plain directory. The leader (or the Ray head) fetches
//! it from the origin, the others from it; vLLM serves the fetched folder
//! on every node. The native group also keeps its compiled code, and a
//! rank that comes back empty takes the weights and the compiled code from
//! the leader. `cargo xtask test` runs it with ORCHESTRATOR_VLLM_BIN,
//! ORCHESTRATOR_RAY_BIN, ORCHESTRATOR_TINY_MODEL and ORCHESTRATOR_NGINX_BIN
//! set; the mounts need root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::path::Path;
use std::time::Duration;

fn var(name: &str) -> String {
    required_env(name, "what `cargo xtask test` sets up")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

fn weights_of(endpoints: &str) -> serde_json::Value {
    status(endpoints)
        .map(|s| s["weights"].clone())
        .unwrap_or_default()
}

/// `orchestrator run` as `unshare -m`, `own` mounted on `at` first (the
/// node's own cache at the path every node uses), the group's secret set.
fn run_in_own_mounts(config: &Path, own: &Path, at: &Path, log: &Path) -> std::process::Child {
    in_own_mounts(own, at, Path::new(env!("CARGO_BIN_EXE_orchestrator")))
        .args(["run", "--config"])
        .arg(config)
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env(
            "ORCHESTRATOR_GROUP_SECRET",
            "weights-e2e-ray-group-secret-0123",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs Ray, vLLM, nginx and root: run by `cargo xtask test`"]
fn a_ray_cluster_fetches_the_model_once_and_each_node_serves_its_own_copy() {
    use orchestrator_phases::config::{OriginKind, WeightsConfig};
    let (head_ip, worker_ip) = ("127.0.0.224", "127.0.0.225");
    let dir = tempfile::tempdir().unwrap();
    let origin_root = dir.path().join("origin");
    let model = std::path::PathBuf::from(var("ORCHESTRATOR_TINY_MODEL"));
    copy_dir(&model, &origin_root.join("models/tiny"));
    let total = folder_bytes(&model);
    let nginx = Nginx::start(&dir.path().join("nginx"), &origin_root, "127.0.0.223", "0");
    let cache = dir.path().join("weights-cache");
    let weights = WeightsConfig {
        origin: Some(OriginKind::Directory),
        url: format!("{}/models/tiny/", nginx.url()),
        repo: Some("org/tiny".into()),
        cache_dir: cache.clone(),
        chunk_mib: 1,
        stall_seconds: 5,
        ..WeightsConfig::default()
    };
    // Every node's endpoints on its own address, one port for all.
    let port = free_port();
    let serve = free_port();
    let ray = var("ORCHESTRATOR_RAY_BIN");
    let node = |c: &mut orchestrator_phases::config::Config, ip: &str| {
        c.ray
            .env
            .insert("VLLM_CPU_RAY_TEST_PLATFORM".into(), "1".into());
        c.ray.num_gpus = Some(1.0);
        c.ray.memory = Some(1_048_576_000);
        c.ray.object_store_memory = Some(209_715_200);
        c.endpoints_host = ip.into();
        c.endpoints_port = port;
        c.serve.weights = weights.clone();
        let params = &mut c.policies.node_health.params;
        params.insert("check-gpu-count".into(), "false".into());
        params.insert("min-open-files".into(), "1024".into());
    };
    let head = TestNode::head_using(head_ip, &ray).with(|c| {
        node(c, head_ip);
        c.cluster.nodes = Some(2);
        c.cluster.wait_timeout_seconds = 300;
        TestNode::serve_tiny_on_cpu_vllm(c, "org/tiny", &var("ORCHESTRATOR_VLLM_BIN"), head_ip);
        c.serve.model = None;
        c.serve.port = serve;
        c.endpoints_port = port;
    });
    let worker =
        TestNode::worker_using(worker_ip, &head.gcs_address(), &ray).with(|c| node(c, worker_ip));
    let head_file = head.write(dir.path(), "head.toml");
    let worker_file = worker.write(dir.path(), "worker.toml");
    let mut children = vec![
        run_in_own_mounts(
            &head_file,
            &dir.path().join("head-cache"),
            &cache,
            &dir.path().join("head.log"),
        ),
        run_in_own_mounts(
            &worker_file,
            &dir.path().join("worker-cache"),
            &cache,
            &dir.path().join("worker.log"),
        ),
    ];
    let _guard = Guard(children.iter().map(|c| c.id() as i32).collect());
    let head_endpoints = format!("{head_ip}:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(400);
    while !http_get(&head_endpoints, "/readyz").contains("200 OK") {
        if std::time::Instant::now() > deadline {
            let tail = |name: &str| {
                let log = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            panic!(
                "the head was not ready within 400 s\n--- head:\n{}\n--- worker:\n{}",
                tail("head.log"),
                tail("worker.log")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    complete(&format!("{head_ip}:{serve}")).unwrap();
    assert_eq!(
        nginx.file_bytes(),
        total,
        "the origin served the model once"
    );
    let seed = weights_of(&head_endpoints);
    assert_eq!(seed["from-origin-bytes"].as_u64(), Some(total), "{seed}");
    let joiner = weights_of(&format!("{worker_ip}:{port}"));
    assert_eq!(joiner["state"], "done", "{joiner}");
    assert_eq!(joiner["from-origin-bytes"].as_u64(), Some(0), "{joiner}");
    let path = seed["path"].as_str().unwrap().to_string();
    let revision = Path::new(&path).strip_prefix(&cache).unwrap().to_path_buf();
    for own in ["head-cache", "worker-cache"] {
        let folder = dir.path().join(own).join(&revision);
        assert!(folder_bytes(&folder) >= total, "{}", folder.display());
    }
    for child in &children {
        signal(child.id() as i32, Sig::TERM);
    }
    for child in &mut children {
        let _ = child.wait();
    }
}

/// Waits until the group's leader is ready (panics with both ranks' log
/// tails after `limit`).
fn until_ready(group: &NativeGroup, run: u32, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !http_get(&group.endpoints_of(0), "/readyz").contains("200 OK") {
        if std::time::Instant::now() > deadline {
            let tail = |rank: u32| {
                let log = std::fs::read_to_string(group.dir.join(format!("rank-{rank}-{run}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            panic!(
                "the leader was not ready within {} s\n--- rank 0:\n{}\n--- rank 1:\n{}",
                limit.as_secs(),
                tail(0),
                tail(1)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn compile_cache_of(endpoints: &str) -> serde_json::Value {
    status(endpoints)
        .map(|s| s["compile-cache"].clone())
        .unwrap_or_default()
}

fn stop_all(children: &mut [std::process::Child]) {
    for child in children.iter() {
        signal(child.id() as i32, Sig::TERM);
    }
    for child in children.iter_mut() {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "a rank did not stop");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The folders under `root` whose name starts with `prefix`, at any depth.
fn folders_named(root: &Path, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(name);
            }
            found.extend(folders_named(&path, prefix));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Rank `rank`'s weights view after a fetch from its peers: done, nothing
/// from the origin, `total` bytes from peers.
fn assert_taken_from_peers(endpoints: &str, total: u64) -> serde_json::Value {
    let view = weights_of(endpoints);
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(view["from-origin-bytes"].as_u64(), Some(0), "{view}");
    let from_peers: u64 = view["from-peers-bytes"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(from_peers, total, "{view}");
    view
}

/// Rank 1's compiled code is in the leader's folder `key` (waits up to
/// 90 s: the leader gathers it once the group serves).
fn until_the_leader_holds_rank_1s_code(
    dir: &Path,
    own: &dyn Fn(u32) -> std::path::PathBuf,
    group: &NativeGroup,
    key: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while folders_named(&own(0).join(key), "rank_1").is_empty() {
        if std::time::Instant::now() > deadline {
            let lines = |rank: u32| {
                std::fs::read_to_string(dir.join(format!("rank-{rank}-0.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("compile cache") || l.contains("launching"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "the leader does not hold rank 1's cache after 90 s\nrank 0 has {:?}, rank 1 {:?}\n--- rank 0:\n{}\n--- rank 1:\n{}\n{}\n{}",
                folders_named(&own(0).join(key), "rank_"),
                folders_named(&own(1).join(key), "rank_"),
                lines(0),
                lines(1),
                compile_cache_of(&group.endpoints_of(0)),
                compile_cache_of(&group.endpoints_of(1)),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One native group (two ranks, real vLLM compiling with Inductor), run
/// twice. Each rank has its own folder mounted at the same path, as on
/// two machines, holding its weights cache and its compile cache.
///
/// Run 0, cold: the leader fetches the model from nginx, rank 1 takes it
/// from the leader, vLLM serves the fetched folder; both ranks compile and
/// the leader gathers rank 1's compiled code. Run 1: rank 1 comes back
/// empty (a new machine): it takes the weights and the compile cache from
/// the leader, which reuses its own; the origin serves nothing more.
#[test]
#[ignore = "needs vLLM, nginx and root: run by `cargo xtask test`"]
fn a_native_group_fetches_the_model_once_keeps_its_compile_cache_and_a_new_rank_takes_both_from_the_leader()
 {
    let dir = tempfile::tempdir().unwrap();
    let origin_root = dir.path().join("origin");
    let model = std::path::PathBuf::from(var("ORCHESTRATOR_TINY_MODEL"));
    copy_dir(&model, &origin_root.join("models/tiny"));
    let total = folder_bytes(&model);
    let nginx = Nginx::start(&dir.path().join("nginx"), &origin_root, "127.0.0.219", "0");
    let mut group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        220,
        2,
        "org/tiny",
        &var("ORCHESTRATOR_VLLM_BIN"),
    );
    group.early_launch = false;
    // vLLM compiles (torch.compile with Inductor: the CPU build does).
    group.enforce_eager = false;
    let at = dir.path().join("node");
    let (weights, compiled) = (at.join("weights"), at.join("compile"));
    group.rank_mount = Some((dir.path().join("rank-{rank}-node"), at.clone()));
    group.extra_toml = format!(
        "[serve.weights]\norigin = \"directory\"\nurl = \"{}/models/tiny/\"\nrepo = \"org/tiny\"\ncache-dir = \"{}\"\nchunk-mib = 1\nstall-seconds = 5\n[serve.compile-cache]\nenabled = true\ndir = \"{}\"\n",
        nginx.url(),
        weights.display(),
        compiled.display()
    );
    let node = |rank: u32| dir.path().join(format!("rank-{rank}-node"));
    let own = |rank: u32| node(rank).join("compile");

    // Run 0, cold: nothing kept anywhere.
    let mut ranks = vec![group.start(0, 0), group.start(1, 0)];
    let _guard = Guard(ranks.iter().map(|c| c.id() as i32).collect());
    until_ready(&group, 0, Duration::from_secs(500));
    group.complete().unwrap();
    // The origin served the model once: to the leader.
    let served = nginx.file_bytes();
    assert_eq!(served, total, "the origin served {served} bytes of {total}");
    let seed = weights_of(&group.endpoints_of(0));
    assert_eq!(seed["state"], "done", "{seed}");
    assert_eq!(seed["from-origin-bytes"].as_u64(), Some(total), "{seed}");
    let joiner = assert_taken_from_peers(&group.endpoints_of(1), total);
    // Each rank's own cache holds the revision, at the same path.
    let path = seed["path"].as_str().unwrap().to_string();
    assert!(path.starts_with(&weights.display().to_string()), "{path}");
    assert_eq!(joiner["path"].as_str(), Some(path.as_str()));
    let revision = Path::new(&path)
        .strip_prefix(&weights)
        .unwrap()
        .to_path_buf();
    for rank in 0..2 {
        let copy = node(rank).join("weights").join(&revision);
        assert!(
            folder_bytes(&copy) >= total,
            "rank {rank}: {}",
            copy.display()
        );
    }
    // vLLM was given the fetched folder.
    let log = std::fs::read_to_string(dir.path().join("rank-0-0.log")).unwrap();
    assert!(
        log.contains(&format!(
            "serving the model from the local copies at {path}"
        )),
        "{log}"
    );
    // Both ranks compiled, each as soon as it was certain that no peer had
    // a cache (the leader once rank 1 had introduced itself, rank 1 once
    // the leader said so), not after asking for the whole wait.
    for rank in 0..2 {
        let log = std::fs::read_to_string(dir.path().join(format!("rank-{rank}-0.log"))).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("compile cache: miss") && l.contains("no peer has one")),
            "rank {rank}:\n{log}"
        );
    }
    for rank in 0..2 {
        let view = compile_cache_of(&group.endpoints_of(rank));
        assert_eq!(view["state"], "miss", "rank {rank}: {view}");
        assert!(
            view["reason"]
                .as_str()
                .unwrap()
                .contains("no compile cache kept"),
            "rank {rank}: {view}"
        );
        assert_eq!(view["inputs"]["tensor-parallel-size"], "2", "{view}");
        assert!(
            !view["inputs"]["vllm-version"].as_str().unwrap().is_empty(),
            "{view}"
        );
    }
    // Once the group serves, the leader gathers rank 1's compiled code.
    let key = compile_cache_of(&group.endpoints_of(0))["key"]
        .as_str()
        .unwrap()
        .to_string();
    until_the_leader_holds_rank_1s_code(dir.path(), &own, &group, &key);
    assert!(!folders_named(&own(1).join(&key), "rank_1").is_empty());
    stop_all(&mut ranks);

    // Run 1: rank 1 comes back empty (a new machine).
    std::fs::remove_dir_all(node(1)).unwrap();
    let mut ranks = vec![group.start(0, 1), group.start(1, 1)];
    let _again = Guard(ranks.iter().map(|c| c.id() as i32).collect());
    until_ready(&group, 1, Duration::from_secs(500));
    group.complete().unwrap();
    // The weights: the leader's own copy, rank 1's from the leader.
    assert_eq!(nginx.file_bytes(), total, "the origin served nothing more");
    let seed = weights_of(&group.endpoints_of(0));
    assert_eq!(seed["state"], "done", "{seed}");
    assert_eq!(seed["cached"], true, "{seed}");
    assert_eq!(seed["from-origin-bytes"].as_u64(), Some(0), "{seed}");
    assert_taken_from_peers(&group.endpoints_of(1), total);
    // The compile cache: the leader's own, rank 1's from the leader.
    let leader = compile_cache_of(&group.endpoints_of(0));
    assert_eq!(leader["state"], "hit", "{leader}");
    assert_eq!(leader["key"].as_str(), Some(key.as_str()), "{leader}");
    let member = compile_cache_of(&group.endpoints_of(1));
    assert_eq!(member["state"], "pulled", "{member}");
    assert_eq!(
        member["from"].as_str(),
        Some(group.endpoints_of(0).as_str()),
        "{member}"
    );
    assert!(
        !folders_named(&own(1).join(&key), "rank_1").is_empty(),
        "rank 1's compiled code is back on rank 1"
    );
    // vLLM was given the kept folder.
    let log = std::fs::read_to_string(dir.path().join("rank-0-1.log")).unwrap();
    let root = format!("{}/{key}/cache/vllm", compiled.display());
    assert!(log.contains(&root), "{root} not in the leader's log");
    let log = std::fs::read_to_string(dir.path().join("rank-1-1.log")).unwrap();
    assert!(log.contains("compile cache: taken from a peer"), "{log}");
    stop_all(&mut ranks);
}
