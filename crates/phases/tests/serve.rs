//! The serve phase against a stand-in server that misbehaves on purpose
//! (tests/fixtures/stand_in_vllm.py): restart on exit, the generation probe
//! catching a wedged engine, shutdown after too many restarts, a clean stop,
//! and the endpoints. No Ray is needed: the GCS address is unused here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_domain::{KeyValue, LaunchPlan, ServeSettings};
use orchestrator_phases::endpoints::{Status, serve_endpoints};
use orchestrator_phases::membership::RayGcs;
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_phases::serve::{ServeContext, ServeOutcome, ServeSpec, supervise};
use orchestrator_phases::supervision::Shutdown;
use orchestrator_policy_host::HealthPolicy;
use orchestrator_test_support::{free_port, http_async, processes_with};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn health_policy() -> HealthPolicy {
    let host = policies::host(&Default::default()).unwrap();
    policies::health(&host, &PolicyRef::parse("builtin:default"), "test").unwrap()
}

/// The stand-in server's command, and how it is probed.
fn spec(port: u16, mode: &str, params: &[(&str, &str)]) -> (ServeSpec, LaunchPlan) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stand_in_vllm.py"
    );
    let plan = LaunchPlan {
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
        early: false,
        ranks: vec![],
    };
    let spec = ServeSpec {
        settings: ServeSettings {
            model: "/models/tiny".into(),
            served_model_name: Some("tiny".into()),
            ..ServeSettings::default()
        },
        launch_params: vec![],
        health_params: params.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect(),
        probe_address: format!("127.0.0.1:{port}"),
        health_interval: Duration::from_millis(200),
        generation_interval: Duration::from_millis(400),
        health_timeout: Duration::from_secs(2),
        generation_timeout: Duration::from_secs(2),
        stop_grace: Duration::from_secs(3),
        drain_timeout: Duration::ZERO,
        ready_after_warmup: true,
        local_copy: None,
        copy_wait: Duration::ZERO,
        scale: None,
        stall: Default::default(),
        preflight: orchestrator_phases::preflight::PreflightSpec::of(&Default::default()),
        weights_wait: None,
        compile_cache_wait: None,
    };
    (spec, plan)
}

/// Serves the stand-in; membership is unused here (no GCS at that port).
async fn serve(
    (spec, plan): &(ServeSpec, LaunchPlan),
    policy: &mut HealthPolicy,
    status: &Status,
    shutdown: &Shutdown,
) -> ServeOutcome {
    let source = RayGcs::new("127.0.0.1:1");
    let ctx = ServeContext {
        health: None,
        source: &source,
        status,
        shutdown,
        group: None,
    };
    supervise(spec, plan, &[], None, policy, ctx).await
}

fn stand_ins_on(port: u16) -> usize {
    processes_with(&format!(
        "stand_in_vllm.py serve /models/tiny --host 127.0.0.1 --port {port} "
    ))
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exited_server_is_restarted_then_shut_down_past_the_limit() {
    let status = Status::new();
    let mut policy = health_policy();
    let port = free_port();
    let spec = spec(
        port,
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
    assert_eq!(stand_ins_on(port), 0, "no server left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_engine_is_caught_by_the_generation_probe() {
    let status = Status::new();
    let mut policy = health_policy();
    let port = free_port();
    let spec = spec(
        port,
        "wedged",
        &[("restart-after-failures", "2"), ("max-restarts", "0")],
    );
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
    assert_eq!(stand_ins_on(port), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_server_is_ready_then_stops_cleanly_on_request() {
    let status = Status::new();
    let address = format!("127.0.0.1:{}", free_port());
    let endpoints = serve_endpoints(address.parse().unwrap(), Arc::clone(&status))
        .await
        .unwrap();
    let mut policy = health_policy();
    let port = free_port();
    let spec = spec(port, "slow-start=1", &[]);
    let (shutdown, trigger) = Shutdown::manual();
    let status2 = Arc::clone(&status);
    let serving = tokio::spawn(async move {
        status2.enter(orchestrator_domain::Phase::Serve);
        serve(&spec, &mut policy, &status2, &shutdown).await
    });

    // Loading: alive but not ready (the stand-in takes 1 s to start).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = http_async(&address, "GET", "/livez", "", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(live.status, 200);
    let ready = http_async(&address, "GET", "/readyz", "", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("starting"), "{}", ready.body);

    // Then healthy and ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http_async(&address, "GET", "/readyz", "", Duration::from_secs(1))
            .await
            .unwrap();
        if ready.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = http_async(&address, "GET", "/status", "", Duration::from_secs(1))
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    assert_eq!(json["phase"], "serve");
    assert_eq!(json["last-health"], "healthy");
    let metrics = http_async(&address, "GET", "/metrics", "", Duration::from_secs(1))
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
    assert_eq!(stand_ins_on(port), 0);
    let ready = http_async(&address, "GET", "/readyz", "", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "not ready while stopping");
    endpoints.abort();
}

/// Waits (up to 20 s) for `/readyz` to be true.
async fn until_ready(status: &Status) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.snapshot().ready {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until the stand-in at `server` answers one request.
async fn until_a_request_runs(server: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_async(server, "GET", "/metrics", "", Duration::from_secs(1)).await;
        if metrics.is_some_and(|m| m.body.contains("} 1.0")) {
            break;
        }
        assert!(Instant::now() < deadline, "the completion never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A streaming completion of `tokens` tokens over a raw connection; the
/// text received until the server closed it.
fn stream_completion(address: String, tokens: u32) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let body =
            format!(r#"{{"model":"tiny","prompt":"count","max_tokens":{tokens},"stream":true}}"#);
        write!(
            stream,
            "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_lets_the_streaming_completion_in_flight_finish() {
    // With a drain, the stream completes; without one (the old way), the
    // server is stopped under it.
    for drain in [Duration::from_secs(20), Duration::ZERO] {
        let status = Status::new();
        let mut policy = health_policy();
        let port = free_port();
        let mut spec = spec(port, "ok", &[]);
        spec.0.drain_timeout = drain;
        let server = spec.0.probe_address.clone();
        let (shutdown, trigger) = Shutdown::manual();
        let status2 = Arc::clone(&status);
        let serving = tokio::spawn(async move {
            status2.enter(orchestrator_domain::Phase::Serve);
            serve(&spec, &mut policy, &status2, &shutdown).await
        });
        until_ready(&status).await;
        // 30 tokens, 0.1 s apart: about 3 s of streaming.
        let client = stream_completion(server.clone(), 30);
        until_a_request_runs(&server).await;
        let asked = Instant::now();
        trigger.request();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!status.snapshot().ready, "/readyz false at once");
        assert_eq!(serving.await.unwrap(), ServeOutcome::Stopped);
        let stopped_after = asked.elapsed();
        let text = client.join().unwrap();
        assert_eq!(stand_ins_on(port), 0, "no server left");
        if drain.is_zero() {
            assert!(
                !text.contains("[DONE]") && stopped_after < Duration::from_secs(2),
                "without a drain the stream is cut ({stopped_after:?}): {text}"
            );
        } else {
            assert!(
                text.contains("\"text\": \" t29\"") && text.contains("data: [DONE]"),
                "the whole stream arrived: {text}"
            );
            assert!(
                stopped_after > Duration::from_secs(1),
                "the server was stopped only after the stream ({stopped_after:?})"
            );
        }
    }
}

/// A restart on the Ray backend with a completion in flight: the node the
/// server runs on dies in the (stand-in) GCS, the health policy restarts
/// the server, and `/readyz` turns false while the stream finishes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_lets_the_streaming_completion_in_flight_finish() {
    use orchestrator_fake_gcs::{StandIn, synthetic_node};
    use orchestrator_phases::membership::MembershipSource;
    let gcs = StandIn::start("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let (head, worker) = (synthetic_node(0), synthetic_node(1));
    let worker_id = worker.node_id.clone();
    gcs.register(vec![head, worker]);
    let source = RayGcs::new(gcs.address());
    let nodes: Vec<orchestrator_domain::Node> = source
        .watch()
        .recv()
        .await
        .and_then(|first| first.view)
        .map(|view| view.alive().cloned().collect())
        .unwrap();
    assert_eq!(nodes.len(), 2);

    let status = Status::new();
    let mut policy = health_policy();
    let port = free_port();
    let mut spec = spec(port, "ok", &[("backoff-ms", "100")]);
    spec.0.drain_timeout = Duration::from_secs(20);
    let server = spec.0.probe_address.clone();
    let (shutdown, trigger) = Shutdown::manual();
    let status2 = Arc::clone(&status);
    let serving = tokio::spawn(async move {
        status2.enter(orchestrator_domain::Phase::Serve);
        let ctx = ServeContext {
            health: None,
            source: &source,
            status: &status2,
            shutdown: &shutdown,
            group: None,
        };
        supervise(&spec.0, &spec.1, &nodes, None, &mut policy, ctx).await
    });
    until_ready(&status).await;
    let first_pid = status.snapshot().server_pid;
    // 40 tokens, 0.1 s apart: about 4 s of streaming.
    let client = stream_completion(server.clone(), 40);
    until_a_request_runs(&server).await;
    gcs.kill(&[worker_id], "the worker's raylet died");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status.snapshot().ready {
        assert!(Instant::now() < deadline, "/readyz stayed true");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = client.join().unwrap();
    assert!(
        text.contains("\"text\": \" t39\"") && text.contains("data: [DONE]"),
        "the whole stream arrived before the restart: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = status.snapshot();
        if now.restarts == 1 && now.ready && now.server_pid.is_some() {
            assert_ne!(now.server_pid, first_pid, "a new server");
            break;
        }
        assert!(Instant::now() < deadline, "not serving again: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.request();
    assert_eq!(serving.await.unwrap(), ServeOutcome::Stopped);
    assert_eq!(stand_ins_on(port), 0, "no server left");
}

/// A start stuck before its imports finish (the stand-in sleeps before it
/// opens its port) is a stall once the stage's deadline passes: named
/// with its rank and stage, its stacks taken by the real py-spy (the
/// sleeping line is the innermost frame) and written to a file, one
/// `StartupStalled` Event, and the health policy told: `on-stall = stop`
/// ends the serve phase with the stall as the reason. The secret in the
/// server's argv is redacted from the stacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ORCHESTRATOR_PY_SPY_BIN (py-spy, as cargo xtask test installs it)"]
async fn a_stalled_start_is_diagnosed_with_its_stacks_and_handed_to_the_policy() {
    let py_spy = orchestrator_test_support::required_env(
        "ORCHESTRATOR_PY_SPY_BIN",
        "py-spy (python/requirements-stacks.txt; cargo xtask test installs it beside vLLM)",
    );
    let status = Status::new();
    let mut events = status.subscribe_events();
    let mut policy = health_policy();
    let port = free_port();
    let stacks = tempfile::tempdir().unwrap();
    let (mut spec, mut plan) = spec(port, "slow-start=120", &[("on-stall", "stop")]);
    // py-spy prints each process's command line: a secret in it must not
    // reach the stacks file.
    plan.argv.extend([
        "--api-key".to_string(),
        "stall-test-secret-4711".to_string(),
    ]);
    spec.stall.deadlines.process_up = 2;
    spec.stall.py_spy = Some(py_spy.into());
    spec.stall.stacks_dir = stacks.path().join("stacks");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(40),
        serve(&(spec, plan), &mut policy, &status, &Shutdown::manual().0),
    )
    .await
    .expect("the stall ends the serve phase within 40 s");
    let took = started.elapsed();
    match outcome {
        ServeOutcome::Shutdown { exit_code, reason } => {
            assert_eq!(exit_code, 1);
            assert!(
                reason.contains("rank 0's server on 127.0.0.1 stalled after stage process-up"),
                "{reason}"
            );
            assert!(reason.contains("stand_in_vllm.py:"), "{reason}");
        }
        other => panic!("expected a shutdown for the stall, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2 + 10), "diagnosed in {took:?}");
    let stall = status.snapshot().stall.expect("the stall in /status");
    assert_eq!(stall.rank, 0);
    assert_eq!(stall.stage, orchestrator_domain::ServerStage::ProcessUp);
    assert!(stall.stalled_ms >= 2000, "{stall:?}");
    assert!(
        stall
            .top_frames
            .first()
            .is_some_and(|f| f.contains("stand_in_vllm.py:")),
        "{stall:?}"
    );
    let file = stall.stacks_file.clone().expect("the stacks kept");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("MainThread") && text.contains("stand_in_vllm.py"),
        "{text}"
    );
    assert!(
        text.contains("--api-key"),
        "the command line is in the dump: {text}"
    );
    assert!(
        !text.contains("stall-test-secret-4711"),
        "a secret in the stacks: {text}"
    );
    let mut stalled = 0;
    while let Ok(event) = events.try_recv() {
        if event.reason == orchestrator_domain::EventReason::StartupStalled {
            stalled += 1;
            assert!(event.message.contains(&file), "{}", event.message);
        }
    }
    assert_eq!(stalled, 1, "one StartupStalled event");
    assert_eq!(stand_ins_on(port), 0, "no server left");
}
