//! The serve phase against a stand-in server that misbehaves on purpose
//! (tests/fixtures/stand_in_vllm.py): restart on exit, the generation probe
//! catching a wedged engine, shutdown after too many restarts, a clean stop,
//! and the endpoints. No Ray is needed: the GCS address is unused here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::probe::http;
use orchestrator_phases::serve::{ServeOutcome, ServeSpec, serve};
use orchestrator_phases::signals::Shutdown;
use orchestrator_phases::status::{Status, serve_endpoints};
use orchestrator_policy_host::types::{KeyValue, LaunchPlan};
use orchestrator_policy_host::{HostConfig, Plugin, PluginSource, PolicyHost, World};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn health_policy() -> Plugin {
    let host = PolicyHost::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .unwrap();
    host.load(World::Health, &PluginSource::Builtin("default".into()))
        .unwrap()
}

fn spec(port: u16, mode: &str, params: &[(&str, &str)]) -> ServeSpec {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stand_in_vllm.py"
    );
    ServeSpec {
        plan: LaunchPlan {
            argv: vec![
                "python3".into(),
                script.into(),
                "serve".into(),
                "/models/tiny".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--served-model-name".into(),
                "tiny".into(),
            ],
            env: vec![KeyValue::new("STAND_IN_MODE", mode)],
        },
        probe_address: format!("127.0.0.1:{port}"),
        model: "tiny".into(),
        health_interval: Duration::from_millis(200),
        generation_interval: Duration::from_millis(400),
        health_timeout: Duration::from_secs(2),
        generation_timeout: Duration::from_secs(2),
        stop_grace: Duration::from_secs(3),
        gcs_address: "127.0.0.1:1".into(),
        params: params.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect(),
        nodes: vec![],
        ready_at: None,
    }
}

fn stand_ins_on(port: u16) -> usize {
    let needle = format!("--port\0{port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains(&needle)
                        && String::from_utf8_lossy(&c).contains("stand_in")
                })
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exited_server_is_restarted_then_shut_down_past_the_limit() {
    let status = Status::new();
    let mut policy = health_policy();
    let spec = spec(
        18701,
        "exit-after=1",
        &[("max-restarts", "2"), ("backoff-ms", "100")],
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(40),
        serve(&spec, &mut policy, &status, &Shutdown::manual().0),
    )
    .await
    .expect("shuts down within 40 s");
    match outcome {
        ServeOutcome::Shutdown { exit_code, reason } => {
            assert_eq!(exit_code, 1);
            assert!(
                reason.contains("exited with code 0")
                    && reason.contains("giving up after 2 restarts"),
                "{reason}"
            );
        }
        other => panic!("expected shutdown, got {other:?}"),
    }
    assert_eq!(status.snapshot().restarts, 2);
    assert_eq!(stand_ins_on(18701), 0, "no server left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_engine_is_caught_by_the_generation_probe() {
    let status = Status::new();
    let mut policy = health_policy();
    let spec = spec(
        18702,
        "wedged",
        &[("restart-after-failures", "2"), ("max-restarts", "0")],
    );
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        serve(&spec, &mut policy, &status, &Shutdown::manual().0),
    )
    .await
    .expect("acts within 30 s");
    match outcome {
        ServeOutcome::Shutdown { reason, .. } => {
            assert!(
                reason.contains("2 failed probes in a row")
                    && reason.contains("EngineCore is not responding"),
                "{reason}"
            );
        }
        other => panic!("expected the policy to act on the wedged engine, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(stand_ins_on(18702), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_server_is_ready_then_stops_cleanly_on_request() {
    let status = Status::new();
    let endpoints = serve_endpoints("127.0.0.1:18710".parse().unwrap(), Arc::clone(&status))
        .await
        .unwrap();
    let mut policy = health_policy();
    let spec = spec(18703, "slow-start=1", &[]);
    let (shutdown, trigger) = Shutdown::manual();
    let status2 = Arc::clone(&status);
    let serving = tokio::spawn(async move {
        status2.enter("serve");
        serve(&spec, &mut policy, &status2, &shutdown).await
    });

    // Loading: alive but not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = http(
        "127.0.0.1:18710",
        "GET",
        "/livez",
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(live.status, 200);
    let ready = http(
        "127.0.0.1:18710",
        "GET",
        "/readyz",
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("starting"), "{}", ready.body);

    // Then healthy and ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http(
            "127.0.0.1:18710",
            "GET",
            "/readyz",
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        if ready.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = http(
        "127.0.0.1:18710",
        "GET",
        "/status",
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    assert_eq!(json["phase"], "serve");
    assert_eq!(json["last-health"], "healthy");
    let metrics = http(
        "127.0.0.1:18710",
        "GET",
        "/metrics",
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert!(
        metrics
            .body
            .contains("orchestrator_phase{phase=\"serve\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("orchestrator_health_verdicts_total{verdict=\"healthy\"}"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("orchestrator_policy_call_seconds_count{world=\"health\"}"),
        "{}",
        metrics.body
    );

    trigger.request();
    assert_eq!(serving.await.unwrap(), ServeOutcome::Stopped);
    assert_eq!(stand_ins_on(18703), 0);
    let ready = http(
        "127.0.0.1:18710",
        "GET",
        "/readyz",
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(ready.status, 503, "not ready while stopping");
    endpoints.abort();
}
