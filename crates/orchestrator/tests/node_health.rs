//! Node health end to end, with real Ray 2.60 nodes: a head that serves
//! (the stand-in vLLM of the phases' tests, put on PATH as `vllm`) and
//! workers whose GPUs come from the NVML stand-in library
//! (`crates/nvml-standin`), loaded through the same dynamic loading path
//! as the driver's. Faults are injected by rewriting the stand-in's state
//! file; each must reach the head's readiness or health decision through
//! the reports the workers publish in the GCS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn write(path: &Path, body: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body.as_bytes()).unwrap();
}

/// A fault file change the stand-in sees (it re-reads on a new mtime).
fn inject(path: &Path, json: &str) {
    std::thread::sleep(Duration::from_millis(20));
    write(path, json);
}

/// Every node's health settings: quick checks, a short grace.
fn node_health(c: &mut orchestrator_phases::config::Config) {
    c.node_health.interval_ms = 250;
    c.node_health.stale_after_ms = 2000;
    c.node_health.follow_interval_ms = 100;
    c.node_health.unhealthy_grace_seconds = 4;
    // This machine's hard limit is below the default 65536.
    c.policies
        .node_health
        .params
        .insert("min-open-files".into(), "4096".into());
}

fn worker(dir: &Path, name: &str, ip: &str, gcs: &str, state: &Path) -> (Child, Captured) {
    let config = TestNode::worker(ip, &format!("127.0.0.90:{gcs}"))
        .with(|c| {
            c.ray.num_gpus = Some(1.0);
            node_health(c);
        })
        .write(dir, &format!("{name}.toml"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("ORCHESTRATOR_NVML_LIBRARY", nvml_standin_library())
        .env("NVML_STANDIN_STATE", state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Captured::stderr_of(&mut child);
    (child, log)
}

/// The head's view of the node at `ip`, once `check` holds for it.
fn node_entry(
    endpoints: u16,
    ip: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let status = status_until(endpoints, limit, |s| {
        s["node-health"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["address"] == ip && check(n)))
    });
    status["node-health"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["address"] == ip).cloned())
        .unwrap()
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn gpu_faults_on_workers_reach_the_heads_readiness_and_health_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let serve_port = free_port();
    let node = TestNode::head("127.0.0.90").with(|c| {
        c.ray.num_gpus = Some(0.0);
        c.cluster.nodes = Some(2);
        c.cluster.wait_timeout_seconds = 180;
        c.serve.model = Some("/models/tiny".into());
        c.serve.served_model_name = Some("tiny".into());
        c.serve.host = "127.0.0.1".into();
        c.serve.port = serve_port;
        c.serve.health_interval_ms = 200;
        c.serve.generation_interval_ms = 1000;
        c.serve.stop_grace_seconds = 3;
        node_health(c);
    });
    let (gcs, endpoints) = (node.config.ray.gcs_port, node.config.endpoints_port);
    let temp = node.temp_dir().unwrap().display().to_string();
    let head_config = node.write(dir.path(), "head.toml");
    let mut head = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &head_config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let head_log = Captured::stderr_of(&mut head);
    let mut guard = Guard(vec![head.id() as i32]);
    let gcs = gcs.to_string();

    // Worker A's GPU has already thrown XID 79: it joins Ray, but does
    // not count toward readiness.
    let state_a = dir.path().join("nvml-a.json");
    write(
        &state_a,
        r#"{"gpus": [{}], "xids": [{"gpu": 0, "xid": 79}]}"#,
    );
    let (worker_a, log_a) = worker(dir.path(), "worker-a", "127.0.0.91", &gcs, &state_a);
    guard.0.push(worker_a.id() as i32);
    let status = status_until(endpoints, Duration::from_secs(120), |s| {
        s["last-readiness"]
            .as_str()
            .is_some_and(|r| r.contains("node 127.0.0.91 unhealthy"))
    });
    let readiness = status["last-readiness"].as_str().unwrap();
    assert!(
        readiness.contains("wait: node 127.0.0.91 unhealthy: GPU 0 XID 79 (fallen off the bus)"),
        "{status}"
    );
    assert_eq!(status["phase"], "wait", "{status}");
    assert_eq!(
        status["nodes-alive"], 2,
        "both Ray nodes are alive: {status}"
    );
    // The unhealthy worker ends itself after its grace period, exit 3.
    let out = wait_with_deadline(worker_a, Duration::from_secs(40));
    let stderr = log_a.text();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("stayed unhealthy for 4 s"), "{stderr}");
    assert_nothing_left(&["127.0.0.91"]);

    // Worker B is healthy: the cluster is ready and serves.
    let state_b = dir.path().join("nvml-b.json");
    write(
        &state_b,
        r#"{"gpus": [{"name": "Stand-in H100", "temperature": 40}]}"#,
    );
    let (worker_b, log_b) = worker(dir.path(), "worker-b", "127.0.0.92", &gcs, &state_b);
    guard.0.push(worker_b.id() as i32);
    let status = status_until(endpoints, Duration::from_secs(120), |s| s["ready"] == true);
    assert_eq!(status["phase"], "serve", "{status}");
    // The startup timeline, each step in order, the way to the first
    // completion.
    let status = status_until(endpoints, Duration::from_secs(20), |s| {
        s["timeline"].to_string().contains("first-completion")
    });
    let timeline = status["timeline"].as_array().unwrap();
    let steps: Vec<&str> = timeline
        .iter()
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    let joined: Vec<&str> = timeline
        .iter()
        .filter(|e| e["step"] == "node-joined")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        joined,
        ["127.0.0.90", "127.0.0.91", "127.0.0.92"],
        "{status}"
    );
    let firsts: Vec<&str> = steps
        .iter()
        .copied()
        .filter(|s| *s != "node-joined")
        .collect();
    assert_eq!(
        firsts,
        [
            "orchestrator-started",
            "ray-up",
            "ready-decision",
            "launch",
            "server-process-up",
            "api-answering",
            "first-health-ok",
            "first-completion"
        ],
        "{status}"
    );
    let times: Vec<u64> = timeline
        .iter()
        .map(|e| e["after-ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        http_get(&format!("127.0.0.1:{endpoints}"), "/metrics")
            .contains("orchestrator_startup_seconds{step=\"first-completion\"}")
    );
    head_log.wait_for("startup timeline:", Duration::from_secs(5));
    let b = node_entry(endpoints, "127.0.0.92", Duration::from_secs(10), |n| {
        n["state"] == "healthy"
    });
    assert_eq!(b["readings"]["gpus"][0]["name"], "Stand-in H100", "{b}");
    assert_eq!(b["readings"]["advertised-gpus"], 1.0, "{b}");
    assert!(
        b["readings"]["raylet-open-file-limit"].as_u64().unwrap() > 0,
        "{b}"
    );
    let metrics_text = http_get(&format!("127.0.0.1:{endpoints}"), "/metrics");
    assert!(
        metrics_text.contains(r#"orchestrator_node_health{node="127.0.0.92",verdict="healthy"} 1"#),
        "{metrics_text}"
    );
    assert!(
        metrics_text
            .contains(r#"orchestrator_node_gpu_temperature_celsius{node="127.0.0.92",gpu="0"} 40"#),
        "{metrics_text}"
    );

    // Thermal throttling: degraded, serving goes on.
    inject(
        &state_b,
        r#"{"gpus": [{"name": "Stand-in H100", "temperature": 91, "throttle": 64}]}"#,
    );
    let b = node_entry(endpoints, "127.0.0.92", Duration::from_secs(10), |n| {
        n["state"] == "degraded"
    });
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("GPU 0 throttled at 91 C: hw-thermal-slowdown"),
        "{b}"
    );
    assert_eq!(
        status_until(endpoints, Duration::from_secs(5), |_| true)["restarts"],
        0
    );

    // The GPU vanishes: unhealthy, and the health policy restarts the
    // server the worker was part of.
    let written = Instant::now();
    inject(&state_b, r#"{"gpus": []}"#);
    let b = node_entry(endpoints, "127.0.0.92", Duration::from_secs(10), |n| {
        n["state"] == "unhealthy"
    });
    let seen_after = written.elapsed();
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("0 GPUs visible, 1 advertised to Ray"),
        "{b}"
    );
    let status = status_until(endpoints, Duration::from_secs(20), |s| {
        s["restarts"].as_u64() >= Some(1)
    });
    head_log.wait_for(
        "node the server runs on is unhealthy",
        Duration::from_secs(5),
    );
    eprintln!("missing GPU seen by the head after {seen_after:?}: {status}");

    // Uncorrectable ECC errors: still unhealthy, the reason follows.
    inject(
        &state_b,
        r#"{"gpus": [{"ecc": true, "ecc_uncorrected": 2}]}"#,
    );
    node_entry(endpoints, "127.0.0.92", Duration::from_secs(10), |n| {
        n["reason"]
            .as_str()
            .is_some_and(|r| r.contains("GPU 0 has 2 uncorrectable ECC errors"))
    });
    let out = wait_with_deadline(worker_b, Duration::from_secs(40));
    assert_eq!(out.status.code(), Some(3), "{}", log_b.text());
    assert_nothing_left(&["127.0.0.92"]);

    signal(head.id() as i32, Sig::TERM);
    let out = wait_with_deadline(head, Duration::from_secs(30));
    let stderr = head_log.text();
    assert!(out.status.success(), "head exits 0 on SIGTERM: {stderr}");
    assert!(stderr.contains("node unhealthy"), "{stderr}");
    assert_nothing_left(&[&temp, "127.0.0.90"]);
}

fn node_check(args: &[&str], nvml_state: Option<&str>) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.args(["node", "check", "--param", "min-open-files=1024"])
        .args(args)
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("ORCHESTRATOR_LOG", "warn")
        .env_remove("ORCHESTRATOR_CONFIG");
    if let Some(json) = nvml_state {
        let state = dir.path().join("nvml.json");
        write(&state, json);
        cmd.env("ORCHESTRATOR_NVML_LIBRARY", nvml_standin_library())
            .env("NVML_STANDIN_STATE", state);
    } else {
        cmd.env(
            "ORCHESTRATOR_NVML_LIBRARY",
            dir.path().join("libnvidia-ml.so.1"),
        );
    }
    let out = output_within(&mut cmd, Duration::from_secs(60));
    let (stdout, stderr) = text(&out);
    (out.status.code(), stdout, stderr)
}

#[test]
fn node_check_prints_the_readings_and_exits_by_the_verdict() {
    // No NVML library: a CPU node, healthy.
    let (code, stdout, stderr) = node_check(&[], None);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("NVML: no NVIDIA GPUs visible"), "{stdout}");
    assert!(stdout.contains("temp dir /tmp/ray: "), "{stdout}");
    assert!(stdout.trim_end().ends_with("verdict: healthy"), "{stdout}");

    // A GPU that threw XID 79, another with ECC errors, one missing.
    let faulty = r#"{"driver": "580.159.04", "gpus": [{"name": "NVIDIA H100 80GB HBM3"}, {"ecc": true, "ecc_uncorrected": 1}], "xids": [{"gpu": 0, "xid": 79}]}"#;
    let (code, stdout, stderr) = node_check(
        &["--advertised-gpus", "3", "--xid-wait-ms", "300"],
        Some(faulty),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("NVML: driver 580.159.04, 2 GPUs"),
        "{stdout}"
    );
    assert!(stdout.contains("critical XIDs: 79"), "{stdout}");
    assert!(
        stdout.contains(
            "verdict: unhealthy: GPU 0 XID 79 (fallen off the bus); GPU 1 has 1 uncorrectable ECC error; 2 GPUs visible, 3 advertised to Ray"
        ),
        "{stdout}"
    );

    // Throttled: degraded, exit 1; JSON for scripts.
    let hot = r#"{"gpus": [{"temperature": 92, "throttle": 32}]}"#;
    let (code, stdout, _) = node_check(&["--json"], Some(hot));
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["verdict"]["degraded"],
        "GPU 0 throttled at 92 C: sw-thermal-slowdown"
    );
    assert_eq!(json["readings"]["gpus"][0]["temperature-c"], 92);
    assert_eq!(
        json["readings"]["advertised-gpus"], 1.0,
        "NVML's count by default"
    );

    // Bad input: exit 2 with the fix named.
    let (code, _, stderr) = node_check(&["--param", "nonsense"], None);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("is not KEY=VALUE"), "{stderr}");
    let (code, _, stderr) = node_check(&["--policy", "builtin:node-count"], None);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no built-in node-health named `node-count`"),
        "{stderr}"
    );
}
