//! Early launch with real Ray 2.60 nodes and the stand-in vLLM of the
//! phases' tests (on PATH as `vllm`): the built-in launch policy (its
//! `early-launch` is on by default) starts the server as soon as the head
//! is up, for the expected layout; once the worker joins, the same server
//! goes on when the cluster formed as expected, and is relaunched (with the
//! reason) when it formed differently; when the worker never comes, the
//! server is stopped with the wait's failure. (A layout change during the
//! wait, a RayCluster scaled, is in kube_e2e.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Cluster {
    dir: tempfile::TempDir,
    head: Child,
    log: Captured,
    endpoints: u16,
    gcs: u16,
    temp: String,
    guard: Guard,
}

/// A head expecting 2 nodes and 2 GPUs, offering `head_gpus`, serving
/// with early launch on (the built-in's default), waiting up to
/// `wait_timeout` seconds.
fn head(ip: &str, head_gpus: u32, wait_timeout: u32) -> Cluster {
    head_with(ip, head_gpus, wait_timeout, |_, _| {})
}

/// Both nodes' node-health parameters: no GPU count check, a low
/// open-file floor (the test machine's limits).
fn node_health_params(c: &mut orchestrator_phases::config::Config) {
    let params = &mut c.policies.node_health.params;
    params.insert("check-gpu-count".into(), "false".into());
    params.insert("min-open-files".into(), "1024".into());
}

/// [`head`] with `change(dir, config)` applied to its configuration.
fn head_with(
    ip: &str,
    head_gpus: u32,
    wait_timeout: u32,
    change: impl FnOnce(&Path, &mut orchestrator_phases::config::Config),
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let serve = free_port();
    let node = TestNode::head(ip).with(|c| {
        c.ray.num_gpus = Some(head_gpus.into());
        c.cluster.nodes = Some(2);
        c.cluster.gpus = 2.0;
        c.cluster.wait_timeout_seconds = wait_timeout.into();
        c.serve.model = Some("/models/tiny".into());
        c.serve.host = "127.0.0.1".into();
        c.serve.port = serve;
        c.serve.health_interval_ms = 200;
        c.serve.stop_grace_seconds = 3;
        node_health_params(c);
        change(dir.path(), c);
    });
    let (endpoints, gcs) = (node.config.endpoints_port, node.config.ray.gcs_port);
    let temp = node.temp_dir().unwrap().display().to_string();
    let config = node.write(dir.path(), "head.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Captured::stderr_of(&mut child);
    let guard = Guard(vec![child.id() as i32]);
    Cluster {
        dir,
        head: child,
        log,
        endpoints,
        gcs,
        temp,
        guard,
    }
}

fn worker(c: &mut Cluster, head_ip: &str, ip: &str, gpus: u32) -> Child {
    worker_with(c, head_ip, ip, gpus, |_| {})
}

/// [`worker`] with `change` applied to its configuration.
fn worker_with(
    c: &mut Cluster,
    head_ip: &str,
    ip: &str,
    gpus: u32,
    change: impl FnOnce(&mut orchestrator_phases::config::Config),
) -> Child {
    let config = TestNode::worker(ip, &format!("{head_ip}:{}", c.gcs))
        .with(|w| {
            w.ray.num_gpus = Some(gpus.into());
            node_health_params(w);
            change(w);
        })
        .write(c.dir.path(), "worker.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.guard.0.push(child.id() as i32);
    child
}

/// The server started during the wait: its pid.
fn early_pid(c: &Cluster) -> i64 {
    let s = status_until(c.endpoints, Duration::from_secs(60), |s| {
        s["phase"] == "wait" && s["server-pid"].as_i64().is_some()
    });
    assert_eq!(s["ready"], false, "not ready while waiting: {s}");
    let launch = s["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["step"] == "launch")
        .cloned()
        .unwrap();
    assert_eq!(launch["detail"], "early, for the expected layout", "{s}");
    s["server-pid"].as_i64().unwrap()
}

fn stop(c: Cluster, ips: &[&str]) {
    signal(c.head.id() as i32, Sig::TERM);
    let mut head = c.head;
    let out = wait_exit(&mut head, Duration::from_secs(40));
    assert!(out.success(), "head exits 0 on SIGTERM: {}", c.log.text());
    let mut needles: Vec<&str> = ips.to_vec();
    needles.push(&c.temp);
    let script = stand_in_vllm_script(c.dir.path());
    needles.push(&script);
    assert_nothing_left(&needles);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn an_early_launched_server_goes_on_when_the_cluster_forms_as_expected() {
    let mut c = head("127.0.0.150", 1, 120);
    let pid = early_pid(&c);
    let mut w = worker(&mut c, "127.0.0.150", "127.0.0.151", 1);
    let s = status_until(c.endpoints, Duration::from_secs(90), |s| s["ready"] == true);
    assert_eq!(s["server-pid"].as_i64(), Some(pid), "the same server: {s}");
    assert_eq!(s["restarts"], 0, "{s}");
    c.log.wait_for(
        "the early-launched serving process goes on",
        Duration::from_secs(5),
    );
    let steps: Vec<String> = s["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["step"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect();
    let launched = steps.iter().position(|e| e.starts_with("launch ")).unwrap();
    let worker_joined = steps
        .iter()
        .position(|e| e == "node-joined 127.0.0.151")
        .unwrap();
    assert!(
        launched < worker_joined,
        "launched before the worker joined: {steps:?}"
    );
    signal(w.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut w, Duration::from_secs(30)).success());
    stop(c, &["127.0.0.150", "127.0.0.151"]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn an_early_launched_server_is_relaunched_when_the_cluster_forms_differently() {
    // Expected: 2 nodes, 1 GPU each (TP 1, PP 2). The head offers none and
    // the worker 2: TP 2, PP 1.
    let mut c = head("127.0.0.155", 0, 120);
    let pid = early_pid(&c);
    let mut w = worker(&mut c, "127.0.0.155", "127.0.0.156", 2);
    let s = status_until(c.endpoints, Duration::from_secs(90), |s| {
        s["phase"] == "serve" && s["server-pid"].as_i64().is_some_and(|p| p != pid)
    });
    assert_eq!(s["restarts"], 0, "a relaunch at ready is no restart: {s}");
    c.log.wait_for(
        "the cluster formed differently from the layout the early launch assumed: relaunching with",
        Duration::from_secs(5),
    );
    let text = c.log.text();
    assert!(
        text.contains("--tensor-parallel-size 2 --pipeline-parallel-size 1")
            && text.contains("(was `vllm serve /models/tiny"),
        "{text}"
    );
    status_until(c.endpoints, Duration::from_secs(30), |s| s["ready"] == true);
    assert!(!is_alive(pid as i32), "the early server was stopped");
    signal(w.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut w, Duration::from_secs(30)).success());
    stop(c, &["127.0.0.155", "127.0.0.156"]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn an_early_launched_server_is_stopped_when_the_worker_never_comes() {
    let c = head("127.0.0.158", 1, 8);
    let pid = early_pid(&c);
    let mut head = c.head;
    let out = wait_exit(&mut head, Duration::from_secs(60));
    let text = c.log.text();
    assert_eq!(out.code(), Some(1), "the wait failed: {text}");
    assert!(
        text.contains("stopping the early-launched server: the cluster never became ready"),
        "{text}"
    );
    assert!(!is_alive(pid as i32), "the early server was stopped");
    assert_nothing_left(&["127.0.0.158", &c.temp, &stand_in_vllm_script(c.dir.path())]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn a_model_copied_to_local_disk_is_served_from_the_copies() {
    // Both nodes copy the shared model directory to a local one while the
    // cluster forms (on one machine they share it); the launch at the
    // ready decision names the copy.
    let mut c = head_with("127.0.0.160", 1, 120, |dir, c| {
        let shared = dir.join("shared/model");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("model.safetensors"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(shared.join("config.json"), "{}").unwrap();
        c.serve.model = Some(shared.display().to_string());
        c.policies
            .launch
            .params
            .insert("early-launch".into(), "false".into());
        c.serve.prefetch.paths = vec![shared];
        c.serve.prefetch.copy_to = Some(dir.join("local/model"));
    });
    let local = c.dir.path().join("local/model");
    let shared = c.dir.path().join("shared/model");
    let mut w = worker_with(&mut c, "127.0.0.160", "127.0.0.161", 1, |w| {
        w.serve.prefetch.paths = vec![shared.clone()];
        w.serve.prefetch.copy_to = Some(local.clone());
    });
    let s = status_until(c.endpoints, Duration::from_secs(90), |s| s["ready"] == true);
    assert_eq!(s["prefetch"]["state"], "done", "{s}");
    assert_eq!(
        s["prefetch"]["copy-to"].as_str(),
        Some(local.display().to_string().as_str()),
        "{s}"
    );
    assert_eq!(
        std::fs::read(local.join("model.safetensors"))
            .unwrap()
            .len(),
        3 << 20
    );
    c.log.wait_for(
        &format!(
            "serving the model from the local copies at {}",
            local.display()
        ),
        Duration::from_secs(5),
    );
    let text = c.log.text();
    assert!(
        text.contains(&format!("launching: vllm serve {} ", local.display())),
        "{text}"
    );
    signal(w.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut w, Duration::from_secs(30)).success());
    stop(c, &["127.0.0.160", "127.0.0.161"]);
}
