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

/// `orchestrator local` serving the tiny model with TP 2 over head + 1 worker.
fn start_local(base: u8, port: u16, extra: &[&str]) -> Child {
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
        .stderr(Stdio::piped())
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

/// Seconds since midnight of the first log line containing `needle`
/// (`2026-11-25T16:42:24.470066Z  INFO ...`).
fn log_seconds(log: &str, needle: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the log"));
    let time = line
        .split('T')
        .nth(1)
        .and_then(|t| t.split('Z').next())
        .expect("a timestamp");
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
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
    let local = start_local(base, port, &[]);
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
    assert!(
        gcs_nodes(&gcs).iter().any(|n| !n.alive),
        "the GCS has the node dead"
    );
    let last = status(&endpoints)["last-health"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("node the server runs on died"), "{last}");

    // (d) SIGTERM: exit 0, no process of the tree left.
    sigterm(&local);
    let out = wait_with_deadline(local, Duration::from_secs(120));
    let (_, stderr) = text(&out);
    assert!(
        out.status.success(),
        "exit 0 on SIGTERM: {}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    // The GCS's push of the death (milliseconds after it marks the node
    // dead) and the action, from the orchestrator's own log.
    let died = log_seconds(&stderr, "node died during serving");
    let acted = log_seconds(
        &stderr,
        "restarting the serving process: node the server runs on died",
    );
    eprintln!(
        "death pushed at {died:.3}, action at {acted:.3}: {:.1} ms",
        (acted - died) * 1000.0
    );
    assert!(
        acted >= died && acted - died < 1.0,
        "the action came {:.3} s after the death",
        acted - died
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
    let local = start_local(base, port, &["--worker-delay", "20"]);
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
