//! The whole product with real vLLM (the CPU build) over a real Ray 2.60
//! cluster, tensor parallel across two nodes. `cargo xtask test` runs these
//! one at a time with ORCHESTRATOR_RAY_BIN, ORCHESTRATOR_VLLM_BIN (the same
//! venv) and ORCHESTRATOR_TINY_MODEL set. Each vLLM start costs ~30-40 s and
//! several GB, so one test covers several cases on one cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn var(name: &str) -> String {
    required_env(name, "what `cargo xtask test` sets up")
}

/// The ports one local cluster uses, all free when picked.
struct Ports {
    gcs: u16,
    agent: u16,
    metrics: u16,
    serve: u16,
    endpoints: u16,
}

impl Ports {
    fn pick() -> Self {
        Self {
            gcs: free_port(),
            agent: free_port(),
            metrics: free_port(),
            serve: free_port(),
            endpoints: free_port(),
        }
    }
}

/// `orchestrator local` serving the tiny model with TP 2 over head + 1
/// worker. Its log goes to `log` (a file: vLLM's output would fill a pipe
/// nobody reads and block it).
fn start_local(base: u8, ports: &Ports, extra: &[&str], log: &std::path::Path) -> Child {
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
        ports.gcs.to_string(),
        "--agent-port".into(),
        ports.agent.to_string(),
        "--metrics-port".into(),
        ports.metrics.to_string(),
        "--temp-dir".into(),
        format!("/tmp/ray-t{}", ports.gcs),
        "--serve-port".into(),
        ports.serve.to_string(),
        "--endpoints-port".into(),
        ports.endpoints.to_string(),
        "--model".into(),
        var("ORCHESTRATOR_TINY_MODEL"),
    ]);
    // A test that sets the KV cache's size sets it alone.
    if extra
        .iter()
        .any(|a| a.starts_with("VLLM_CPU_KVCACHE_SPACE="))
        && let Some(at) = args.iter().position(|a| a == "VLLM_CPU_KVCACHE_SPACE=1")
    {
        args.drain(at - 1..=at);
    }
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

fn status_of(endpoints: &str) -> serde_json::Value {
    status(endpoints).unwrap_or(serde_json::Value::Null)
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    poll_until(what, limit, || ok().then_some(()))
}

#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn serves_restarts_on_server_and_node_death_and_stops_cleanly() {
    let (base, ports) = (100u8, Ports::pick());
    let endpoints = format!("127.0.0.1:{}", ports.endpoints);
    let server = format!("127.0.0.{base}:{}", ports.serve);
    let gcs = format!("127.0.0.{base}:{}", ports.gcs);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    // The launch at the ready decision (early launch is tested below).
    let local = start_local(
        base,
        &ports,
        &["--launch-param", "early-launch=false"],
        &log,
    );
    let _guard = Guard(vec![local.id() as i32]);

    // (a) the completion succeeds and /readyz is 200.
    wait_for("ready", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    // Ready only after a warm-up completion: at the first /readyz 200 the
    // timeline has it, and every rank's stage is warmed-up, each named
    // with its node (rank 1 through Ray's worker prefix).
    let ready = status_of(&endpoints);
    let steps: Vec<&str> = ready["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["step"].as_str())
        .collect();
    assert!(steps.contains(&"first-completion"), "{ready}");
    let stages = ready["stages"].as_array().expect("stages in /status");
    assert_eq!(stages.len(), 2, "{ready}");
    for (rank, stage) in stages.iter().enumerate() {
        assert_eq!(stage["rank"], rank, "{stage}");
        assert_eq!(stage["stage"], "warmed-up", "{stage}");
        assert!(
            stage["node"]
                .as_str()
                .is_some_and(|n| n.starts_with("127.0.0.")),
            "{stage}"
        );
    }
    assert!(
        http_get(&endpoints, "/metrics").contains("orchestrator_server_stage{rank=\"1\"} 6"),
        "the stage metric"
    );
    let generated = complete(&server).expect("a completion from real vLLM");
    eprintln!("completion: {generated:?}");
    let first_pid = status_of(&endpoints)["server-pid"]
        .as_i64()
        .expect("server pid");

    // (c) kill the vLLM server: the default policy restarts it and
    // completions succeed again.
    signal_group(first_pid as i32, Sig::KILL);
    wait_for(
        "the restart after the server was killed",
        Duration::from_secs(60),
        || status_of(&endpoints)["restarts"] == 1,
    );
    wait_for("ready again", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    assert_ne!(
        status_of(&endpoints)["server-pid"].as_i64(),
        Some(first_pid)
    );
    complete(&server).expect("completions after the restart");

    // (b) kill the Ray worker: the policy acts on the dead node (how soon
    // after the GCS marked it dead is `cargo xtask bench serve`'s figure).
    let raylet = raylet_of(&format!("127.0.0.{}", base + 1)).expect("the worker's raylet");
    signal(raylet, Sig::KILL);
    wait_for(
        "the action on the dead node",
        Duration::from_secs(60),
        || status_of(&endpoints)["restarts"] == 2,
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
    // The reason is read from the log at the end: `/status` moves on to
    // the relaunched server's verdict after the backoff.

    // (d) SIGTERM: exit 0, no process of the tree left.
    signal(local.id() as i32, Sig::TERM);
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
    let restarts: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("restarting the serving process"))
        .collect();
    assert!(restarts.len() >= 2, "both restarts logged: {restarts:?}");
    assert!(
        restarts
            .iter()
            .skip(1)
            // The node's own health check (its raylet gone) may act
            // before the GCS marks it dead.
            .any(|l| l.contains("node the server runs on died")
                || l.contains("node the server runs on is unhealthy")
                || l.contains("serving process exited")),
        "the second restart acts on the dead worker: {restarts:?}"
    );
    // The server is started right after the ready decision (how soon is
    // `cargo xtask bench serve`'s figure: typically ~1 ms).
    let launch_us = launch_after_ready_us(&log_text).expect("the launch delay is logged");
    eprintln!("vLLM started {launch_us} us after the ready decision");
    // vLLM's server has the head's address in its command line; a needle
    // of every `vllm serve` would see another lane's.
    assert_nothing_left(&[
        &format!("/tmp/ray-t{}", ports.gcs),
        &format!("127.0.0.{base}"),
        &format!("127.0.0.{}", base + 1),
    ]);
}

#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn late_worker_an_early_launched_vllm_waits_for_it_and_serves() {
    let (base, ports) = (110u8, Ports::pick());
    let endpoints = format!("127.0.0.1:{}", ports.endpoints);
    let server = format!("127.0.0.{base}:{}", ports.serve);
    let started = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    let local = start_local(
        base,
        &ports,
        &[
            "--worker-delay",
            "20",
            "--scale",
            "--scale-interval-ms",
            "500",
            "--scale-window-seconds",
            "10",
            "--scale-param",
            "target-requests-per-replica=2",
        ],
        &log,
    );
    let _guard = Guard(vec![local.id() as i32]);
    // While the worker is held back, vLLM is already started (early launch,
    // the built-in's default) for the expected layout, and not ready.
    let early = poll_until("the early launch", Duration::from_secs(60), || {
        let s = status_of(&endpoints);
        (s["phase"] == "wait" && s["nodes-alive"] == 1 && s["server-pid"].is_i64()).then_some(s)
    });
    assert_eq!(early["ready"], false, "{early}");
    let pid = early["server-pid"].as_i64().unwrap();
    wait_for("ready", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    let worker_joined = gcs_nodes(&format!("127.0.0.{base}:{}", ports.gcs))
        .into_iter()
        .filter(|n| !n.is_head)
        .map(|n| n.start_time_ms)
        .max()
        .expect("the worker joined");
    assert!(worker_joined >= started + 19_000, "the worker joined late");
    // The same vLLM, whose placement group waited for the worker, serves.
    let s = status_of(&endpoints);
    assert_eq!(s["server-pid"].as_i64(), Some(pid), "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the early-launched serving process goes on"),
        "{text}"
    );
    complete(&server).expect("serves");

    // Load-driven replicas: idle, the scale policy recommends 1; a burst
    // of 8 long completions (2 a replica is the target here) raises the
    // recommendation within a few samples; 10 s (the window) after the
    // burst it is back to 1.
    let scale = |s: &serde_json::Value| s["scale"]["desired-replicas"].as_u64();
    poll_until("an idle recommendation", Duration::from_secs(30), || {
        (scale(&status_of(&endpoints)) == Some(1)).then_some(())
    });
    let burst_started = std::time::Instant::now();
    let burst: Vec<_> = (0..8)
        .map(|_| stream_completion(server.clone(), "tiny", 200))
        .collect();
    let raised = poll_until(
        "the burst's recommendation",
        Duration::from_secs(60),
        || {
            let s = status_of(&endpoints);
            scale(&s).filter(|d| *d >= 2).map(|d| (d, s))
        },
    );
    eprintln!(
        "burst -> recommendation of {} replicas in {:.1} s: {}",
        raised.0,
        burst_started.elapsed().as_secs_f64(),
        raised.1["scale"]["reason"]
    );
    let metrics = http_get(&endpoints, "/metrics");
    let desired = metric_value(&metrics, "orchestrator_desired_replicas");
    assert!(desired.is_some_and(|v| v >= 2.0), "{metrics}");
    for (_, stream) in burst {
        let streamed = stream.join().unwrap();
        assert!(streamed.contains("data: [DONE]"), "{streamed}");
    }
    // The burst is over: the recommendation holds for the window, then
    // falls back.
    let burst_done = std::time::Instant::now();
    let held = status_of(&endpoints);
    assert!(scale(&held).is_some_and(|d| d >= 2), "{}", held["scale"]);
    poll_until(
        "the recommendation back to 1",
        Duration::from_secs(40),
        || (scale(&status_of(&endpoints)) == Some(1)).then_some(()),
    );
    eprintln!(
        "back to 1 replica {:.1} s after the burst ended",
        burst_done.elapsed().as_secs_f64()
    );

    // Graceful stop: a streaming completion in flight when SIGTERM arrives
    // completes; /readyz turns false first; then vLLM and Ray stop.
    let (first_chunk, stream) = stream_completion(server.clone(), "tiny", 160);
    first_chunk
        .recv_timeout(Duration::from_secs(60))
        .expect("the stream started");
    signal(local.id() as i32, Sig::TERM);
    wait_for(
        "/readyz false while draining",
        Duration::from_secs(5),
        || !http_get(&endpoints, "/readyz").contains("200 OK"),
    );
    let streamed = stream.join().unwrap();
    assert!(
        streamed.contains("\"finish_reason\":\"length\"") && streamed.contains("data: [DONE]"),
        "the stream in flight completed: {streamed}"
    );
    assert!(
        wait_with_deadline(local, Duration::from_secs(120))
            .status
            .success()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("draining: /readyz is false")
            && text.contains("drained: every request in flight finished"),
        "{text}"
    );
    assert_nothing_left(&[
        &format!("/tmp/ray-t{}", ports.gcs),
        &format!("127.0.0.{base}"),
    ]);
}

/// Scale from zero with real vLLM: the head's worker group starts with no
/// node under Ray's real autoscaler (its monitor with the fake multi-node
/// provider, on loopback: see `ray_autoscaler.rs`); the head asks for the
/// layout, the autoscaler launches the worker, vLLM (early-launched for
/// the expected layout) gets its placement group and serves
/// tensor-parallel over the head and the autoscaler's node.
#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn from_zero_workers_rays_autoscaler_starts_the_worker_and_vllm_serves() {
    let (head_ip, worker_ip) = ("127.0.0.120", "127.0.0.121");
    let dir = tempfile::tempdir().unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoscaler");
    let (model, vllm) = (var("ORCHESTRATOR_TINY_MODEL"), var("ORCHESTRATOR_VLLM_BIN"));
    let head = FromZeroHead::write(
        dir.path(),
        head_ip,
        worker_ip,
        &fixtures,
        true,
        Serving::Vllm {
            model: &model,
            vllm: &vllm,
        },
    );
    let log = dir.path().join("orchestrator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", &head.config.display().to_string()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![child.id() as i32]);
    let endpoints = format!("127.0.0.1:{}", head.endpoints);
    let server = format!("{head_ip}:{}", head.serve);
    wait_for("ready", Duration::from_secs(400), || {
        http_get(&endpoints, "/readyz").contains("200 OK")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("asked Ray's autoscaler for the layout (the head, then the expected workers): 1 x {CPU: 1, GPU: 1}, 1 x {GPU: 1}"),
        "{text}"
    );
    let worker = gcs_nodes(&format!("{head_ip}:{}", head.gcs))
        .into_iter()
        .find(|n| !n.is_head && n.alive)
        .expect("the autoscaler's worker joined");
    assert_eq!(worker.address, worker_ip);
    assert_eq!(
        worker.id,
        format!("{}1", &FAKE_HEAD_NODE_ID[..FAKE_HEAD_NODE_ID.len() - 1]),
        "launched by Ray's autoscaler: {worker:?}"
    );
    complete(&server).expect("vLLM serves over the autoscaler's node");
    signal(child.id() as i32, Sig::TERM);
    assert!(
        wait_exit(&mut child, Duration::from_secs(120)).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_nothing_left(&[head_ip, worker_ip, &head.temp]);
}

/// A start that fails late, behind Ray: every worker's KV cache asks for
/// 4 TiB, so each rank's vLLM fails after loading its weights. The head
/// names the rank (from Ray's worker prefix), its node and stage, and the
/// exception.
#[test]
#[ignore = "needs vLLM and Ray: run by `cargo xtask test`"]
fn a_start_that_fails_behind_ray_is_named_with_rank_stage_and_exception() {
    let (base, ports) = (104u8, Ports::pick());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    let local = start_local(
        base,
        &ports,
        &[
            "--launch-param",
            "early-launch=false",
            "--vllm-env",
            "VLLM_CPU_KVCACHE_SPACE=4096",
        ],
        &log,
    );
    let _guard = Guard(vec![local.id() as i32]);
    // One failure is enough here: counting identical failures and the
    // stop after them are native_e2e's `a_rank_that_fails_to_start`. A
    // timeout shows the orchestrator's log and the last /status.
    let seen = status_until_logged(&log, ports.endpoints, Duration::from_secs(300), |s| {
        s["first-failure"]["exception"].is_string()
    });
    let first = &seen["first-failure"];
    eprintln!("first failure: {first}");
    assert!(
        first["exception"]
            .as_str()
            // Behind Ray the engine re-raises the worker's error in its own
            // (`RuntimeError: Worker failed with error '...'`).
            .is_some_and(
                |e| e.contains("Available memory on node") && e.contains("on kv cache allocation")
            ),
        "{first}"
    );
    assert_eq!(first["stage"], "weights-loaded", "{first}");
    assert!(first["rank"].as_u64().is_some_and(|r| r <= 1), "{first}");
    let node = first["node"].as_str().unwrap_or_default();
    assert!(
        node == format!("127.0.0.{base}") || node == format!("127.0.0.{}", base + 1),
        "{first}"
    );
    assert_eq!(seen["ready"], false, "{seen}");
    signal(local.id() as i32, Sig::TERM);
    let out = wait_with_deadline(local, Duration::from_secs(120));
    assert!(out.status.success(), "exit 0 on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("startup failed: rank ")
                && l.contains("while allocating the KV cache")),
        "one line names the failure"
    );
}

/// The gang preflight behind Ray: with `--preflight required` the head
/// runs one check per Ray node (a task pinned to it, with its GPUs) over
/// Gloo before the launch; `/status` has every rank's figures and the
/// timeline has the preflight between the ready decision and the launch.
/// The server is the stand-in (the preflight comes before it).
#[test]
#[ignore = "needs Ray and vLLM's Python (torch): run by `cargo xtask test`"]
fn a_ray_cluster_runs_its_gang_preflight_before_the_launch() {
    let (base, ports) = (108u8, Ports::pick());
    let endpoints = format!("127.0.0.1:{}", ports.endpoints);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orchestrator.log");
    let python = std::path::Path::new(&var("ORCHESTRATOR_VLLM_BIN")).with_file_name("python");
    let mut local = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["local", "--workers", "1", "--gpus-per-node", "1"])
        .args(["--memory-mib", "1000", "--object-store-mib", "200"])
        .args(["--head-ip", &format!("127.0.0.{base}")])
        .args(["--gcs-port", &ports.gcs.to_string()])
        .args(["--agent-port", &ports.agent.to_string()])
        .args(["--metrics-port", &ports.metrics.to_string()])
        .arg("--temp-dir")
        .arg(format!("/tmp/ray-t{}", ports.gcs))
        .args(["--serve-port", &ports.serve.to_string()])
        .args(["--endpoints-port", &ports.endpoints.to_string()])
        .args(["--model", "tiny", "--vllm-bin", "vllm"])
        .args(["--preflight", "required", "--preflight-python"])
        .arg(&python)
        .env("ORCHESTRATOR_RAY_BIN", var("ORCHESTRATOR_RAY_BIN"))
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .env("PATH", stand_in_vllm_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let serving = poll_until(
        "serving after the preflight",
        Duration::from_secs(180),
        || status(&endpoints).filter(|s| s["ready"] == true),
    );
    let preflight = &serving["preflight"];
    assert_eq!(preflight["passed"], true, "{preflight}");
    let ranks = preflight["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2, "{preflight}");
    let addresses: Vec<&str> = ranks.iter().filter_map(|r| r["address"].as_str()).collect();
    assert_eq!(
        addresses,
        [format!("127.0.0.{base}"), format!("127.0.0.{}", base + 1)],
        "rank 0 on the head, rank 1 on the worker: {preflight}"
    );
    for rank in ranks {
        assert_eq!(rank["backend"], "gloo", "{rank}");
        assert!(rank["allreduce-ms"].as_f64().is_some(), "{rank}");
    }
    let steps: Vec<&str> = serving["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    let at = |step: &str| steps.iter().position(|s| *s == step).unwrap_or(usize::MAX);
    assert!(
        at("ready-decision") < at("preflight") && at("preflight") < at("launch"),
        "{steps:?}"
    );
    signal(local.id() as i32, Sig::TERM);
    let out = wait_exit(&mut local, Duration::from_secs(60));
    assert!(
        out.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
