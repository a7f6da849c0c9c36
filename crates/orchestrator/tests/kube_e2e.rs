//! `orchestrator run` on a head pod with Kubernetes awareness on, against
//! real Ray 2.60 nodes and the fake API server (no real API server can run
//! on the test machines; see crates/fake-kube-api). Each test uses its own
//! 127.0.0.x addresses, ports and temp dir and leaves nothing running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_fake_kube_api::{FakeApiServer, fixture};
use orchestrator_test_support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NS: &str = "inference";
const HEAD_POD: &str = "vllm-llama-head-x7k2p";

/// The fake API server on a runtime of its own (the test itself is
/// synchronous).
struct Api {
    server: FakeApiServer,
    _runtime: tokio::runtime::Runtime,
}

fn api(replicas: i64, pods: Vec<Value>) -> Api {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = fixture("raycluster.json");
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = json!(replicas);
    let mut objects = vec![cluster, fixture("pod-head.json")];
    objects.extend(pods);
    let server = runtime.block_on(FakeApiServer::start(objects)).unwrap();
    Api {
        server,
        _runtime: runtime,
    }
}

/// A worker pod of gpu-group, Running at `ip`.
fn running_pod(name: &str, ip: &str) -> Value {
    let mut pod = fixture("pod-worker-running.json");
    pod["metadata"]["name"] = json!(name);
    pod["status"]["podIP"] = json!(ip);
    pod["status"]["podIPs"] = json!([{ "ip": ip }]);
    pod
}

fn unschedulable_pod(name: &str) -> Value {
    let mut pod = fixture("pod-worker-unschedulable.json");
    pod["metadata"]["name"] = json!(name);
    pod
}

/// The head's configuration on free ports, Kubernetes awareness on
/// against `url`, then `change`; returns it, the GCS address and the
/// endpoints' port.
fn head_config(
    dir: &Path,
    ip: &str,
    url: &str,
    change: impl FnOnce(&mut orchestrator_phases::config::Config),
) -> (PathBuf, String, u16) {
    let node = TestNode::head(ip).with(|c| {
        c.endpoints_host = "0.0.0.0".into();
        c.ray.num_gpus = Some(1.0);
        c.kubernetes.enabled = true;
        c.kubernetes.api_server = Some(url.into());
        c.kubernetes.namespace = Some(NS.into());
        c.kubernetes.pod_name = Some(HEAD_POD.into());
        change(c);
    });
    let path = node.write(dir, "head.toml");
    (path, node.gcs_address(), node.config.endpoints_port)
}

/// Starts `orchestrator run` with its output in `log`.
fn run(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config"])
        .arg(config)
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn worker(dir: &Path, head: &str, ip: &str) -> (Child, PathBuf) {
    let config = TestNode::worker(ip, head)
        .with(|c| {
            c.ray.num_gpus = Some(1.0);
            c.ray.gcs_wait_seconds = 60;
        })
        .write(dir, &format!("worker-{ip}.toml"));
    let log = dir.join(format!("worker-{ip}.log"));
    (run(&config, &log), log)
}

fn stop(child: Child, log: &Path) -> String {
    signal(child.id() as i32, Sig::TERM);
    let out = wait_with_deadline(child, Duration::from_secs(40));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(out.status.success(), "exit {:?}: {text}", out.status);
    text
}

fn events(api: &Api) -> Vec<Value> {
    api.server.all("v1", "Event", NS)
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn run_follows_the_raycluster_through_a_scale_up_and_diagnoses_missing_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (head_ip, w1, w2) = ("127.0.0.80", "127.0.0.81", "127.0.0.82");
    // The RayCluster asks for one worker; its pod runs but Ray has not
    // joined yet.
    let api = api(
        1,
        vec![running_pod("vllm-llama-gpu-group-worker-aaaaa", w1)],
    );
    let (config, gcs, port) = head_config(dir.path(), head_ip, &api.server.url(), |_| {});
    let temp = format!("/tmp/ray-t{}", gcs.rsplit(':').next().unwrap_or(""));
    let head_log = dir.path().join("head.log");
    let head = run(&config, &head_log);
    let mut guard = Guard(vec![head.id() as i32]);

    // Expected from the spec: head + 1 worker, 2 GPUs; the worker pod is
    // named as running but not in the GCS.
    let s = status_until_logged(&head_log, port, Duration::from_secs(60), |s| {
        s["phase"] == "wait" && s["nodes-alive"] == 1 && s["nodes-expected"] == 2
    });
    let diagnostics = s["diagnostics"].to_string();
    assert!(
        diagnostics.contains("vllm-llama-gpu-group-worker-aaaaa")
            && diagnostics.contains("Running at 127.0.0.81 but not yet in the GCS"),
        "{s:#}"
    );

    // Scale up to 2 workers while the head waits: the new pod cannot be
    // scheduled.
    let mut scaled = api
        .server
        .get("ray.io/v1", "RayCluster", NS, "vllm-llama")
        .unwrap();
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = json!(2);
    api.server.apply(scaled);
    api.server
        .apply(unschedulable_pod("vllm-llama-gpu-group-worker-bbbbb"));
    let s = status_until_logged(&head_log, port, Duration::from_secs(10), |s| {
        s["nodes-expected"] == 3 && s["diagnostics"].to_string().contains("Insufficient")
    });
    assert!(
        s["diagnostics"]
            .to_string()
            .contains("vllm-llama-gpu-group-worker-bbbbb (group gpu-group) has not joined the Ray cluster: Pending, unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu"),
        "{s:#}"
    );

    // The first worker joins: 2 of 3, still waiting (the old expectation
    // of 2 would have been met here).
    let (worker1, log1) = worker(dir.path(), &gcs, w1);
    guard.0.push(worker1.id() as i32);
    // The readiness policy has judged 2 alive nodes: still waiting.
    let s2 = status_until_logged(&head_log, port, Duration::from_secs(60), |s| {
        s["nodes-alive"] == 2
            && s["last-readiness"]
                .as_str()
                .is_some_and(|r| r.contains("2 of 3"))
    });
    assert_eq!(s2["phase"], "wait", "{s2:#}");
    assert!(
        !s2["diagnostics"].to_string().contains("worker-aaaaa"),
        "a joined worker is not diagnosed: {s2:#}"
    );

    // The second pod gets a node and joins: ready at 3 of 3.
    api.server
        .apply(running_pod("vllm-llama-gpu-group-worker-bbbbb", w2));
    let (worker2, log2) = worker(dir.path(), &gcs, w2);
    guard.0.push(worker2.id() as i32);
    let s = status_until_logged(&head_log, port, Duration::from_secs(60), |s| {
        s["ready"] == true
    });
    assert_eq!(s["nodes-alive"], 3, "{s:#}");
    assert_eq!(s["nodes-expected"], 3, "{s:#}");
    assert_eq!(s["diagnostics"], json!([]), "{s:#}");

    // Events on the head pod tell the story. They are posted by a
    // background task, so the last one may land just after `/status`
    // says ready.
    let recorded = poll_until("the Serving event", Duration::from_secs(10), || {
        let recorded = events(&api);
        recorded
            .iter()
            .any(|e| e["reason"] == "Serving")
            .then_some(recorded)
    });
    let reasons: Vec<&str> = recorded
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["StartingRay", "WaitingForCluster", "Serving"] {
        assert!(reasons.contains(&reason), "{reason} missing: {reasons:?}");
    }
    assert!(
        recorded
            .iter()
            .all(|e| e["involvedObject"]["name"] == HEAD_POD),
        "{recorded:#?}"
    );

    stop(worker2, &log2);
    stop(worker1, &log1);
    let text = stop(head, &head_log);
    assert!(text.contains("expected topology changed"), "{text}");
    // The Events of the shutdown were sent before the head exited.
    assert!(
        events(&api).iter().any(|e| e["reason"] == "Stopping"),
        "{:#?}",
        events(&api)
    );
    assert!(
        text.contains("kubernetes: following the owner's pods")
            && text.contains("owner=vllm-llama"),
        "{text}"
    );
    guard.0.clear();
    assert_nothing_left(&[&temp, head_ip, w1, w2]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn a_wait_that_times_out_names_the_unschedulable_worker() {
    let dir = tempfile::tempdir().unwrap();
    let head_ip = "127.0.0.84";
    let api = api(
        1,
        vec![unschedulable_pod("vllm-llama-gpu-group-worker-ccccc")],
    );
    let (config, gcs, _) = head_config(dir.path(), head_ip, &api.server.url(), |c| {
        c.cluster.wait_timeout_seconds = 10
    });
    let temp = format!("/tmp/ray-t{}", gcs.rsplit(':').next().unwrap_or(""));
    let log = dir.path().join("head.log");
    let head = run(&config, &log);
    let mut guard = Guard(vec![head.id() as i32]);
    let out = wait_with_deadline(head, Duration::from_secs(90));
    // Reaped: its pid may belong to anyone now.
    guard.0.clear();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not ready after 10")
            && text.contains("why: pod vllm-llama-gpu-group-worker-ccccc (group gpu-group) has not joined the Ray cluster: Pending, unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu"),
        "{text}"
    );
    let failed = events(&api)
        .into_iter()
        .find(|e| e["reason"] == "ClusterNotReady")
        .unwrap_or_else(|| panic!("no ClusterNotReady event: {:#?}", events(&api)));
    assert_eq!(failed["type"], "Warning");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("Insufficient nvidia.com/gpu"),
        "{failed:#}"
    );
    assert_nothing_left(&[&temp, head_ip]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn without_rbac_the_wait_goes_on_from_the_gcs_and_names_the_missing_permission() {
    let dir = tempfile::tempdir().unwrap();
    let head_ip = "127.0.0.86";
    let api = api(1, vec![]);
    for verb in ["list", "watch"] {
        api.server.forbid(verb, "rayclusters");
        api.server.forbid(verb, "pods");
    }
    api.server.forbid("create", "events");
    // The configuration says a head alone is the whole cluster.
    let (config, gcs, port) = head_config(dir.path(), head_ip, &api.server.url(), |c| {
        c.cluster.nodes = Some(1);
        c.cluster.wait_timeout_seconds = 60;
    });
    let temp = format!("/tmp/ray-t{}", gcs.rsplit(':').next().unwrap_or(""));
    let log = dir.path().join("head.log");
    let head = run(&config, &log);
    let mut guard = Guard(vec![head.id() as i32]);
    let s = status_until_logged(&log, port, Duration::from_secs(60), |s| s["ready"] == true);
    assert_eq!(s["nodes-expected"], 1, "{s:#}");
    let text = stop(head, &log);
    guard.0.clear();
    assert!(
        text.contains("verb \"list\" on resource \"rayclusters\" in apiGroup \"ray.io\"")
            && text.contains("verb \"create\" on resource \"events\""),
        "{text}"
    );
    assert_nothing_left(&[&temp, head_ip]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn an_early_launch_follows_a_scale_change_during_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let head_ip = "127.0.0.87";
    // One worker asked for: the early server is planned for 2 nodes with
    // 1 GPU each (pipeline-parallel 2).
    let api = api(1, vec![]);
    let serve_port = free_port();
    let (config, gcs, port) = head_config(dir.path(), head_ip, &api.server.url(), |c| {
        c.serve.model = Some("/models/tiny".into());
        c.serve.host = "127.0.0.1".into();
        c.serve.port = serve_port;
        c.serve.health_interval_ms = 200;
        c.serve.stop_grace_seconds = 3;
    });
    let temp = format!("/tmp/ray-t{}", gcs.rsplit(':').next().unwrap_or(""));
    let log = dir.path().join("head.log");
    let head = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("RUST_LOG", "info")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![head.id() as i32]);
    let s = status_until_logged(&log, port, Duration::from_secs(60), |s| {
        s["phase"] == "wait" && s["server-pid"].as_i64().is_some() && s["nodes-expected"] == 2
    });
    let first = s["server-pid"].as_i64().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("--tensor-parallel-size 1 --pipeline-parallel-size 2"),
        "{text}"
    );

    // Scaled to 2 workers during the wait: the early server is replaced by
    // one planned for 3 nodes, still during the wait.
    let mut scaled = api
        .server
        .get("ray.io/v1", "RayCluster", NS, "vllm-llama")
        .unwrap();
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = json!(2);
    api.server.apply(scaled);
    let s = status_until_logged(&log, port, Duration::from_secs(30), |s| {
        s["nodes-expected"] == 3 && s["server-pid"].as_i64().is_some_and(|p| p != first)
    });
    assert_eq!(s["phase"], "wait", "{s:#}");
    assert_eq!(s["ready"], false, "{s:#}");
    assert!(
        !is_alive(first as i32),
        "the first early server was stopped"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the expected layout changed during the wait (3 nodes, 3 GPUs): relaunching the early server with")
            && text.contains("--tensor-parallel-size 1 --pipeline-parallel-size 3"),
        "{text}"
    );
    let recorded = poll_until(
        "the ServerRestarting event",
        Duration::from_secs(10),
        || {
            events(&api)
                .into_iter()
                .find(|e| e["reason"] == "ServerRestarting")
        },
    );
    assert!(
        recorded["message"]
            .as_str()
            .unwrap()
            .contains("the expected layout changed during the wait"),
        "{recorded:#}"
    );
    let second = s["server-pid"].as_i64().unwrap();
    stop(head, &log);
    assert!(
        !is_alive(second as i32),
        "the early server stopped with the head"
    );
    assert_nothing_left(&[head_ip, &temp, &stand_in_vllm_script(dir.path())]);
}
