//! The whole product with real vLLM (the CPU build) over a real Ray 2.60
//! cluster, tensor parallel across two nodes. `cargo xtask test` runs these
//! one at a time with ORCHESTRATOR_RAY_BIN, ORCHESTRATOR_VLLM_BIN (the same
//! venv) and ORCHESTRATOR_TINY_MODEL set. Each vLLM start costs ~30-40 s and
//! several GB, so one test covers several cases on one cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set; `cargo xtask test` sets it up"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `orchestrator local` serving the tiny model with TP 2 over head + 1
/// worker. Its log goes to `log` (a file: vLLM's output would fill a pipe
/// nobody reads and block it).
fn start_local(base: u8, port: u16, extra: &[&str], log: &std::path::Path) -> Child {
    let head = format!("127.0.0.{base}");
    let mut args: Vec<String> = [
        "local",
        "--workers",
        "1",
        "--gpus-per-node",
        "1",
        "--memory-mib",
        "1000",
        "--object-store-mib",
        "200",
        "--tp",
        "2",
        "--ray-env",
        "VLLM_CPU_RAY_TEST_PLATFORM=1",
        "--vllm-env",
        "VLLM_CPU_RAY_TEST_PLATFORM=1",
        "--vllm-env",
        "VLLM_CPU_KVCACHE_SPACE=1",
        "--vllm-env",
        "HF_HUB_OFFLINE=1",
        "--vllm-arg=--max-model-len",
        "--vllm-arg=256",
        "--vllm-arg=--dtype",
        "--vllm-arg=bfloat16",
        "--vllm-arg=--enforce-eager",
        "--health-interval-ms",
        "500",
        "--generation-interval-ms",
        "5000",
        "--health-param",
        "backoff-ms=200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--head-ip".into(),
        head,
        "--gcs-port".into(),
        port.to_string(),
        "--agent-port".into(),
        (port + 46000).to_string(),
        "--metrics-port".into(),
        (port + 22000).to_string(),
        "--temp-dir".into(),
        format!("/tmp/ray-t{port}"),
        "--serve-port".into(),
        (port + 12000).to_string(),
        "--endpoints-port".into(),
        (port + 12001).to_string(),
        "--model".into(),
        var("ORCHESTRATOR_TINY_MODEL"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(&args)
        .env("ORCHESTRATOR_RAY_BIN", var("ORCHESTRATOR_RAY_BIN"))
        .env("ORCHESTRATOR_VLLM_BIN", var("ORCHESTRATOR_VLLM_BIN"))
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn status(endpoints: &str) -> serde_json::Value {
    let text = http_get(endpoints, "/status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One completion through the served API; returns the generated text.
fn complete(server: &str) -> Result<String, String> {
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}"#;
    let mut stream = std::net::TcpStream::connect(server).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.0\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(text.lines().next().unwrap_or("").to_string());
    }
    let json: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or(""))
        .map_err(|e| e.to_string())?;
    json["choices"][0]["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no choices: {json}"))
}

/// When the GCS marked a dead node dead (`end_time_ms`), if one is.
fn gcs_death_time(address: &str) -> Option<u64> {
    use orchestrator_ray_gcs::proto::node_info_gcs_service_client::NodeInfoGcsServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = NodeInfoGcsServiceClient::connect(format!("http://{address}"))
            .await
            .ok()?;
        let reply = client
            .get_all_node_info(orchestrator_ray_gcs::proto::GetAllNodeInfoRequest { limit: None })
            .await
            .ok()?
            .into_inner();
        reply
            .node_info_list
            .iter()
            .find(|n| n.state == 1)
            .map(|n| n.end_time_ms)
    })
}

fn gcs_nodes(address: &str) -> Vec<orchestrator_policy_host::types::Node> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client =
            orchestrator_ray_gcs::GcsClient::connect_until(address, Duration::from_secs(10))
                .await
                .unwrap();
        client.get_all_nodes().await.unwrap()
    })
}

#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn serves_restarts_on_server_and_node_death_and_stops_cleanly() {
    let (base, port) = (100u8, 6500u16);
    let endpoints = format!("127.0.0.1:{}", port + 12001);
    let server = format!("127.0.0.{base}:{}", port + 12000);
    let gcs = format!("127.0.0.{base}:{port}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    let local = start_local(base, port, &[], &log);
    let _guard = Guard(vec![local.id() as i32]);

    // (a) the completion succeeds and /readyz is 200.
    wait_for("ready", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    let generated = complete(&server).expect("a completion from real vLLM");
    eprintln!("completion: {generated:?}");
    let first_pid = status(&endpoints)["server-pid"]
        .as_i64()
        .expect("server pid");

    // (c) kill the vLLM server: the default policy restarts it and
    // completions succeed again.
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(first_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for(
        "the restart after the server was killed",
        Duration::from_secs(60),
        || status(&endpoints)["restarts"] == 1,
    );
    wait_for("ready again", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    assert_ne!(status(&endpoints)["server-pid"].as_i64(), Some(first_pid));
    complete(&server).expect("completions after the restart");

    // (b) kill the Ray worker: the policy's action comes within 1 s of the
    // GCS marking the node dead.
    let raylet = raylet_of(&format!("127.0.0.{}", base + 1)).expect("the worker's raylet");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(raylet).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for(
        "the action on the dead node",
        Duration::from_secs(60),
        || status(&endpoints)["restarts"] == 2,
    );
    let acted_ms = now_ms();
    // When did the GCS mark the node dead? (its end_time_ms; polled, since
    // vLLM may notice its dead worker, and exit, before the GCS does.)
    let mut marked_dead_ms = None;
    wait_for(
        "the GCS marking the node dead",
        Duration::from_secs(30),
        || {
            marked_dead_ms = gcs_death_time(&gcs);
            marked_dead_ms.is_some()
        },
    );
    let marked_dead_ms = marked_dead_ms.unwrap();
    eprintln!(
        "GCS marked the worker dead at {marked_dead_ms}; the health policy's action was seen at {acted_ms}"
    );
    assert!(
        acted_ms <= marked_dead_ms + 1000,
        "the action came {} ms after the GCS marked the node dead",
        acted_ms - marked_dead_ms
    );
    let last = status(&endpoints)["last-health"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("node the server runs on died") || last.contains("serving process exited"),
        "{last}"
    );

    // (d) SIGTERM: exit 0, no process of the tree left.
    sigterm(&local);
    let out = wait_with_deadline(local, Duration::from_secs(120));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: String = log_text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "exit 0 on SIGTERM; the log ends:\n{tail}"
    );
    assert!(
        log_text.contains("restarting the serving process"),
        "restarts logged"
    );
    // The server is started at once after the ready decision, not after a
    // poll interval (typically ~1 ms; the bound leaves room for a loaded
    // machine: a fork under contention once took 6 ms; `cargo xtask bench
    // serve` reports the figure).
    let launch_us: u64 = log_text
        .lines()
        .find(|l| l.contains("serving process started after the ready decision"))
        .and_then(|l| l.split("after_us=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the launch delay is logged");
    eprintln!("vLLM started {launch_us} us after the ready decision");
    assert!(
        launch_us < 50_000,
        "vLLM started {launch_us} us after the ready decision"
    );
    assert_nothing_left(&[
        &format!("/tmp/ray-t{port}"),
        &format!("127.0.0.{base}"),
        &format!("127.0.0.{}", base + 1),
        "vllm serve",
    ]);
}

#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn late_worker_vllm_launches_only_after_it_joined_and_serves() {
    let (base, port) = (110u8, 6510u16);
    let endpoints = format!("127.0.0.1:{}", port + 12001);
    let server = format!("127.0.0.{base}:{}", port + 12000);
    let started = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    let local = start_local(base, port, &["--worker-delay", "20"], &log);
    let _guard = Guard(vec![local.id() as i32]);
    // While the worker is held back, nothing is launched.
    std::thread::sleep(Duration::from_secs(12));
    let early = status(&endpoints);
    assert_eq!(early["phase"], "wait", "{early}");
    assert!(early["server-pid"].is_null(), "{early}");
    wait_for("ready", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    let worker_joined = gcs_nodes(&format!("127.0.0.{base}:{port}"))
        .into_iter()
        .filter(|n| !n.is_head)
        .map(|n| n.start_time_ms)
        .max()
        .expect("the worker joined");
    let history = status(&endpoints)["history"].clone();
    let serve_since = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["phase"] == "serve")
        .and_then(|e| e["since-ms"].as_u64())
        .expect("serve phase");
    assert!(worker_joined >= started + 19_000, "the worker joined late");
    assert!(
        serve_since >= worker_joined,
        "vLLM launched at {serve_since}, before the worker joined at {worker_joined}"
    );
    complete(&server).expect("serves");
    sigterm(&local);
    assert!(
        wait_with_deadline(local, Duration::from_secs(120))
            .status
            .success()
    );
    assert_nothing_left(&[
        &format!("/tmp/ray-t{port}"),
        &format!("127.0.0.{base}"),
        "vllm serve",
    ]);
}
