//! A head restart with GCS fault tolerance, against a real `redis-server`
//! (Debian's package), real Ray 2.60 and real vLLM (the CPU build) serving
//! tensor parallel over head + worker. `cargo xtask test` runs it with
//! ORCHESTRATOR_RAY_BIN, ORCHESTRATOR_VLLM_BIN, ORCHESTRATOR_TINY_MODEL and
//! ORCHESTRATOR_REDIS_BIN set.
//!
//! The head pod's death is played by freezing the head's orchestrator and
//! everything under it (Ray's head daemons, vLLM) and SIGKILLing them all;
//! a new head orchestrator with the same configuration then recovers the
//! cluster from Redis, finds the surviving worker, relaunches vLLM and
//! serves. The worker's orchestrator and raylet are never restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::config::{Config, GcsFaultTolerance};
use orchestrator_test_support::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn var(name: &str) -> String {
    required_env(name, "what `cargo xtask test` sets up")
}

// Its own range (the waiting lane runs it beside vllm_e2e, which uses .100-.121).
const HEAD_IP: &str = "127.0.0.231";
const WORKER_IP: &str = "127.0.0.232";
const PASSWORD: &str = "s3cret-for-the-test";

/// Ray's health checks made quick (so the GCS gives up on the old head
/// in seconds) and vLLM's CPU test platform (one "GPU" per node); 1 GB of
/// memory, 200 MB of object store.
fn ray_node(c: &mut Config) {
    for (key, value) in [
        ("VLLM_CPU_RAY_TEST_PLATFORM", "1"),
        ("RAY_health_check_initial_delay_ms", "1000"),
        ("RAY_health_check_period_ms", "1000"),
        ("RAY_health_check_timeout_ms", "1000"),
        ("RAY_health_check_failure_threshold", "3"),
    ] {
        c.ray.env.insert(key.into(), value.into());
    }
    c.ray.num_gpus = Some(1.0);
    c.ray.memory = Some(1_048_576_000);
    c.ray.object_store_memory = Some(209_715_200);
}

struct Cluster {
    dir: tempfile::TempDir,
    gcs: u16,
    redis: u16,
    serve: u16,
    head_endpoints: u16,
    worker_endpoints: u16,
    temp: String,
}

impl Cluster {
    fn new() -> Self {
        let gcs = free_port();
        Self {
            dir: tempfile::tempdir().unwrap(),
            gcs,
            redis: free_port(),
            serve: free_port(),
            head_endpoints: free_port(),
            worker_endpoints: free_port(),
            temp: format!("/tmp/ray-ft{gcs}"),
        }
    }

    fn head_config(&self) -> std::path::PathBuf {
        TestNode::head_using(HEAD_IP, &var("ORCHESTRATOR_RAY_BIN"))
            .with(|c| {
                ray_node(c);
                c.endpoints_port = self.head_endpoints;
                c.endpoints_host = "0.0.0.0".into();
                c.ray.gcs_port = self.gcs;
                c.ray.temp_dir = Some(self.temp.clone().into());
                c.ray.gcs_fault_tolerance = Some(GcsFaultTolerance {
                    redis_address: Some(format!("{HEAD_IP}:{}", self.redis)),
                    redis_password_env: Some("REDIS_PASSWORD".into()),
                    external_storage_namespace: Some("gcs-ft-test".into()),
                    ..GcsFaultTolerance::default()
                });
                c.cluster.nodes = Some(2);
                c.cluster.wait_timeout_seconds = 300;
                TestNode::serve_tiny_on_cpu_vllm(
                    c,
                    &var("ORCHESTRATOR_TINY_MODEL"),
                    &var("ORCHESTRATOR_VLLM_BIN"),
                    HEAD_IP,
                );
                c.serve.port = self.serve;
                c.policies.launch.builtin = Some("vllm".into());
                c.policies.health.builtin = Some("default".into());
                c.policies
                    .health
                    .params
                    .insert("backoff-ms".into(), "200".into());
            })
            .write(self.dir.path(), "head.toml")
    }

    fn worker_config(&self) -> std::path::PathBuf {
        TestNode::worker_using(
            WORKER_IP,
            &format!("{HEAD_IP}:{}", self.gcs),
            &var("ORCHESTRATOR_RAY_BIN"),
        )
        .with(|c| {
            ray_node(c);
            c.endpoints_port = self.worker_endpoints;
            c.ray.gcs_fault_tolerance = Some(GcsFaultTolerance {
                reconnect_timeout_seconds: 600,
                ..GcsFaultTolerance::default()
            });
        })
        .write(self.dir.path(), "worker.toml")
    }

    fn orchestrator(&self, config: &std::path::Path, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("REDIS_PASSWORD", PASSWORD)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn server(&self) -> String {
        format!("{HEAD_IP}:{}", self.serve)
    }
}

fn readyz(endpoints: u16) -> (u16, String) {
    http(
        &format!("127.0.0.1:{endpoints}"),
        "GET",
        "/readyz",
        "",
        Duration::from_secs(5),
    )
    .map(|r| (r.status, r.body))
    .unwrap_or((0, String::new()))
}

fn until_serving(c: &Cluster, limit: Duration, logs: &[&str]) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match complete(&c.server()) {
            Ok(text) => return text,
            Err(e) if Instant::now() > deadline => panic!(
                "not serving within {limit:?}: {e}\n{}",
                logs.iter()
                    .map(|l| format!("--- {l}\n{}", tail(&c.log(l), 60)))
                    .collect::<String>()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
#[ignore = "needs redis-server, vLLM and Ray: run by `cargo xtask test`"]
fn a_head_killed_while_serving_comes_back_from_redis_and_serves_without_restarting_the_worker() {
    let c = Cluster::new();
    let redis_dir = c.dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let mut redis = Command::new(var("ORCHESTRATOR_REDIS_BIN"))
        .args([
            "--bind",
            HEAD_IP,
            "--port",
            &c.redis.to_string(),
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            redis_dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![redis.id() as i32]);

    let head_config = c.head_config();
    let worker_config = c.worker_config();
    let mut head = c.orchestrator(&head_config, "head-1.log");
    guard.0.push(head.id() as i32);
    let mut worker = c.orchestrator(&worker_config, "worker.log");
    guard.0.push(worker.id() as i32);
    let first = until_serving(&c, Duration::from_secs(400), &["head-1.log", "worker.log"]);
    assert!(!first.is_empty());
    let worker_raylet = raylet_of(WORKER_IP).expect("the worker's raylet");
    assert_eq!(readyz(c.worker_endpoints).0, 200);
    // The password reached Ray (through the environment, expanded by the
    // orchestrator) but not the log.
    assert!(
        !c.log("head-1.log").contains(PASSWORD),
        "password in the log"
    );
    assert!(c.log("head-1.log").contains("--redis-password=<redacted>"));

    // The head pod dies: its orchestrator, Ray's head daemons, vLLM.
    let killed_at = Instant::now();
    let killed = kill_tree(head.id() as i32);
    assert!(
        killed.len() >= 4,
        "head orchestrator, GCS, raylet, vLLM: {killed:?}"
    );
    head.wait().unwrap();

    // The worker rides the outage out: it says so on /readyz and neither
    // its orchestrator nor its raylet exits.
    poll_until(
        "the worker's /readyz on the outage",
        Duration::from_secs(30),
        || {
            let (code, body) = readyz(c.worker_endpoints);
            (code == 503 && body.contains("GCS connection lost")).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker's orchestrator exited"
    );
    assert!(is_alive(worker_raylet), "the worker's raylet exited");

    // A new head with the same configuration: Redis gives it the cluster.
    let restarted_at = Instant::now();
    let head = c.orchestrator(&head_config, "head-2.log");
    guard.0.push(head.id() as i32);
    let second = until_serving(&c, Duration::from_secs(400), &["head-2.log", "worker.log"]);
    let death_to_serving = killed_at.elapsed();
    let restart_to_serving = restarted_at.elapsed();
    assert_eq!(
        first, second,
        "the same greedy completion after the restart"
    );

    // The same worker: its orchestrator and raylet never restarted, and it
    // is ready again.
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker's orchestrator exited"
    );
    assert_eq!(
        raylet_of(WORKER_IP),
        Some(worker_raylet),
        "the worker's raylet changed"
    );
    poll_until("the worker ready again", Duration::from_secs(30), || {
        (readyz(c.worker_endpoints).0 == 200).then_some(())
    });
    // The recovered GCS holds the old head's entry; the new head counts
    // only itself and the worker.
    let status = status(&format!("127.0.0.1:{}", c.head_endpoints)).expect("/status");
    assert_eq!(status["phase"], "serve", "{status}");
    let head2 = c.log("head-2.log");
    assert!(
        !head2.contains("3 of 2") && !head2.contains("nodes=3"),
        "the old head counted: {}",
        tail(&head2, 40)
    );
    let steps: Vec<String> = status["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| format!("{}={}", e["step"].as_str().unwrap_or("?"), e["after-ms"]))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "new head's timeline (ms after its start): {}",
        steps.join(" ")
    );
    eprintln!(
        "FIGURE gcs_ft head_death_to_serving_s={:.1} restart_to_serving_s={:.1}",
        death_to_serving.as_secs_f64(),
        restart_to_serving.as_secs_f64()
    );

    // Stop both orchestrators: nothing of either is left.
    signal(head.id() as i32, Sig::TERM);
    let out = wait_with_deadline(head, Duration::from_secs(90));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        tail(&c.log("head-2.log"), 40)
    );
    signal(worker.id() as i32, Sig::TERM);
    let status = wait_exit(&mut worker, Duration::from_secs(60));
    assert!(status.code().is_some());
    signal(redis.id() as i32, Sig::TERM);
    wait_exit(&mut redis, Duration::from_secs(10));
    assert_nothing_left(&[&c.temp, HEAD_IP, WORKER_IP]);
}
