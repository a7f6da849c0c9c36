//! The native backend with real vLLM (the CPU build), no Ray: a leader and
//! a worker, each its own `orchestrator run` with `backend = "native"` on
//! its own loopback address, serving the tiny model tensor-parallel over
//! both ranks through vLLM's own multi-node mode. `cargo xtask test` runs
//! it with ORCHESTRATOR_VLLM_BIN and ORCHESTRATOR_TINY_MODEL set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::time::Duration;

/// `orchestrator local --backend native --workers 1`, its log in `log`,
/// plugins compiled without a cache.
fn local_native(log: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args(["local", "--backend", "native", "--workers", "1"])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    command
}

fn var(name: &str) -> String {
    required_env(name, "what `cargo xtask test` sets up")
}

#[test]
#[ignore = "needs vLLM: run by `cargo xtask test`"]
fn a_late_worker_joins_a_dead_rank_and_a_lost_pod_restart_the_group_and_sigterm_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        130,
        2,
        &var("ORCHESTRATOR_TINY_MODEL"),
        &var("ORCHESTRATOR_VLLM_BIN"),
    );
    let figures = group.scenario(Duration::from_secs(20));
    eprintln!("{figures:?}");
    // The leader said why it waited, and the group's restarts are in its
    // log: rank 1's exit, then its lost heartbeat.
    let log = std::fs::read_to_string(dir.path().join("rank-0-0.log")).unwrap();
    assert!(
        log.contains("rank 1's serving process on 127.0.0.131 was killed by signal 9"),
        "{log}"
    );
    assert!(
        log.contains("no heartbeat from rank 1"),
        "the lost pod's heartbeat"
    );
    assert!(log.contains("told every rank to start generation="));
    // The group was launched early: rank 0 while rank 1 was missing, rank
    // 1 as it registered, and the group went on at ready.
    for line in [
        "early launch: rank 0 starts while the ranks register",
        "rank registered during the early launch: told to start",
        "the early-launched group goes on",
    ] {
        assert!(log.contains(line), "{line:?} missing from the leader's log");
    }
}

#[test]
#[ignore = "needs the orchestrator binary only: run by `cargo xtask test`"]
fn a_duplicate_and_an_out_of_range_rank_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // No model: the leader forms the group and supervises it.
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        135,
        2,
        "",
        "vllm",
    );
    let config = group.config(0);
    let written = std::fs::read_to_string(&config).unwrap();
    let without_model = written.replace("model = \"\"\n", "");
    std::fs::write(&config, &without_model).unwrap();
    let mut leader = std::process::Command::new(&group.binary)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![leader.id() as i32]);
    poll_until("the leader waiting", Duration::from_secs(30), || {
        status(&group.endpoints_of(0)).filter(|s| s["phase"] == "wait")
    });
    // Rank 1 registers; the group is formed.
    let worker_config = group.config(1);
    let member = |config: &std::path::Path, sets: &[&str]| {
        let mut cmd = std::process::Command::new(&group.binary);
        cmd.args(["run", "--config"]).arg(config);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd
    };
    let mut worker = member(&worker_config, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _worker_guard = Guard(vec![worker.id() as i32]);
    poll_until("the group formed", Duration::from_secs(30), || {
        status(&group.endpoints_of(0)).filter(|s| s["nodes-alive"] == 2)
    });
    // A second rank 1 (on another address) is refused: not permanently
    // (the first may be a pod on its way out), so it retries, then gives
    // up when its leader wait ends, naming both pods.
    let out = output_within(
        &mut member(
            &worker_config,
            &[
                "native.node-address=127.0.0.137",
                "endpoints-host=127.0.0.137",
                "native.leader-wait-seconds=2",
            ],
        ),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("two pods claim rank 1"), "{stderr}");
    assert!(stderr.contains("127.0.0.136"), "names the holder: {stderr}");
    // A rank the group does not have is refused at once by the member
    // itself (exit 2, a configuration error)...
    let out = output_within(
        &mut member(&worker_config, &["native.rank=2"]),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rank 2 is out of range for a group of 2"),
        "{stderr}"
    );
    // ... and by the leader when the member's group size disagrees.
    let out = output_within(
        &mut member(
            &worker_config,
            &[
                "native.rank=2",
                "native.group-size=3",
                "native.node-address=127.0.0.138",
                "endpoints-host=127.0.0.138",
            ],
        ),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("group of 3 nodes but the leader's group has 2"),
        "{stderr}"
    );
    // A stranger on the network (another secret) takes no rank: it is
    // refused and never obeys what answers; and a multi-node member with
    // no secret at all does not start (exit 2) unless told insecure.
    let stranger_secret = dir.path().join("stranger-secret");
    std::fs::write(&stranger_secret, "not-the-group-secret-at-all").unwrap();
    let out = output_within(
        &mut member(
            &worker_config,
            &[
                &format!("native.secret-file={}", stranger_secret.display()),
                "native.node-address=127.0.0.139",
                "endpoints-host=127.0.0.139",
                "native.leader-wait-seconds=2",
            ],
        ),
        Duration::from_secs(30),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not authenticate"), "{stderr}");
    let without = dir.path().join("no-secret.toml");
    let text_of = std::fs::read_to_string(&worker_config).unwrap();
    let no_secret: String = text_of
        .lines()
        .filter(|l| !l.starts_with("secret-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&without, no_secret).unwrap();
    let out = output_within(&mut member(&without, &[]), Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs a group secret"), "{stderr}");
    assert!(
        status(&group.endpoints_of(0)).is_some_and(|s| s["nodes-alive"] == 2),
        "the group is untouched"
    );
    // The first rank 1 still holds its place; both stop cleanly.
    assert_eq!(status(&group.endpoints_of(0)).unwrap()["nodes-alive"], 2);
    signal(worker.id() as i32, Sig::TERM);
    signal(leader.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    assert!(wait_exit(&mut leader, Duration::from_secs(20)).success());
}

/// The leader on a LeaderWorkerSet, against the fake API server (no API
/// server runs here) holding the set and its pods in the API's shape: the
/// group's size comes from the set, and a worker pod that never registers
/// is named with what Kubernetes says about it, in `/status` and in the
/// failure when the wait ends.
#[test]
#[ignore = "needs the orchestrator binary only: run by `cargo xtask test`"]
fn the_leader_names_a_worker_pod_kubernetes_cannot_schedule() {
    use orchestrator_fake_kube_api::{FakeApiServer, fixture};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        145,
        3,
        "",
        "vllm",
    );
    // Rank 1's pod runs at the address its orchestrator registers from;
    // rank 2's pod cannot be scheduled.
    let mut running = fixture("pod-lws-worker-running.json");
    running["status"]["podIP"] = serde_json::json!(group.address(1));
    running["status"]["podIPs"] = serde_json::json!([{ "ip": group.address(1) }]);
    let server = runtime
        .block_on(FakeApiServer::start(vec![
            fixture("leaderworkerset.json"),
            fixture("pod-lws-leader.json"),
            running,
            fixture("pod-lws-worker-unschedulable.json"),
        ]))
        .unwrap();
    let config = group.config(0);
    let written = std::fs::read_to_string(&config).unwrap();
    // No model; the group size is left to the environment LWS sets.
    let leader_config = written
        .replace("model = \"\"\n", "")
        .replace("group-size = 3\n", "")
        + &format!(
            "[kubernetes]\nenabled = true\napi-server = \"{}\"\nnamespace = \"inference\"\npod-name = \"vllm-native-0\"\n",
            server.url()
        );
    let leader_config =
        leader_config.replace("wait-timeout-seconds = 400", "wait-timeout-seconds = 8");
    std::fs::write(&config, leader_config).unwrap();
    let leader = std::process::Command::new(&group.binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("LWS_GROUP_SIZE", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![leader.id() as i32]);
    let mut worker = group.start(1, 0);
    let _worker_guard = Guard(vec![worker.id() as i32]);
    let seen = poll_until(
        "the unschedulable pod named",
        Duration::from_secs(20),
        || {
            status(&group.endpoints_of(0)).filter(|s| {
                s["nodes-alive"] == 2 && s["diagnostics"].to_string().contains("vllm-native-0-2")
            })
        },
    );
    assert_eq!(seen["nodes-expected"], 3, "{seen}");
    let diagnostics = seen["diagnostics"].to_string();
    assert!(
        diagnostics.contains("0/4 nodes are available: 4 Insufficient nvidia.com/gpu"),
        "{diagnostics}"
    );
    // The registered rank's pod is not named.
    assert!(!diagnostics.contains("vllm-native-0-1"), "{diagnostics}");
    let out = leader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("vllm-native-0-2"), "{stderr}");
    assert!(
        stderr.contains("ranks that never registered with this leader: [2]"),
        "{stderr}"
    );
    signal(worker.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
    // The leader asked for its set and its group's pods only.
    let paths: Vec<String> = server.requests().iter().map(|r| r.uri.clone()).collect();
    assert!(
        paths.iter().any(|p| p.contains("leaderworkersets")),
        "{paths:?}"
    );
    // Its Events are on its pod, the failure at its exit among them (the
    // lifecycle flushes the last Events before the process ends).
    let events = server.all("v1", "Event", "inference");
    let failed = events
        .iter()
        .find(|e| e["reason"] == "ClusterNotReady")
        .unwrap_or_else(|| panic!("no ClusterNotReady event: {events:#?}"));
    assert_eq!(
        failed["involvedObject"]["name"], "vllm-native-0",
        "{failed}"
    );
    assert!(
        failed["message"].to_string().contains("vllm-native-0-2"),
        "{failed}"
    );
}

/// Node health on the native backend, without vLLM: each rank checks its
/// own GPUs (the NVML stand-in) and its reports ride on its heartbeats. A
/// worker whose GPU threw XID 79 registers, but the leader does not count
/// it and says why; the worker exits 3 after its grace (so its pod is
/// replaced); a healthy worker then forms the group.
#[test]
#[ignore = "needs the orchestrator binary and the NVML stand-in: run by `cargo xtask test`"]
fn a_rank_whose_gpu_failed_is_not_counted_and_exits_after_its_grace() {
    const NODE_HEALTH: &str = r#"
[node-health]
enabled = true
interval-ms = 250
stale-after-ms = 2000
follow-interval-ms = 100
unhealthy-grace-seconds = 4
[policies.node-health.params]
min-open-files = "4096"
"#;
    let dir = tempfile::tempdir().unwrap();
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        140,
        2,
        "",
        "vllm",
    );
    let configured = |rank: u32| {
        let path = group.config(rank);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("model = \"\"\n", "");
        std::fs::write(&path, text + NODE_HEALTH).unwrap();
        path
    };
    // Rank 1's log is read at its exit; the others' go to files.
    let start = |rank: u32, state: &std::path::Path, stderr: std::process::Stdio| {
        std::process::Command::new(&group.binary)
            .args(["run", "--config"])
            .arg(configured(rank))
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
            .env("ORCHESTRATOR_NVML_LIBRARY", nvml_standin_library())
            .env("NVML_STANDIN_STATE", state)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let log = |name: &str| {
        std::process::Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap())
    };
    let healthy = dir.path().join("nvml-ok.json");
    std::fs::write(&healthy, r#"{"gpus": [{}]}"#).unwrap();
    let faulty = dir.path().join("nvml-xid.json");
    std::fs::write(
        &faulty,
        r#"{"gpus": [{}], "xids": [{"gpu": 0, "xid": 79}]}"#,
    )
    .unwrap();
    let mut leader = start(0, &healthy, log("leader.log"));
    let _guard = Guard(vec![leader.id() as i32]);
    let sick = start(1, &faulty, std::process::Stdio::piped());
    let _sick_guard = Guard(vec![sick.id() as i32]);
    let seen = poll_until(
        "the leader saying why rank 1 does not count",
        Duration::from_secs(20),
        || {
            status(&group.endpoints_of(0)).filter(|s| {
                s["last-readiness"]
                    .as_str()
                    .is_some_and(|r| r.contains("XID 79"))
            })
        },
    );
    assert_eq!(seen["phase"], "wait", "{seen}");
    let unhealthy = seen["node-health"].to_string();
    assert!(
        unhealthy.contains("rank-1") && unhealthy.contains("unhealthy"),
        "{unhealthy}"
    );
    let out = sick.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("stayed unhealthy for 4 s"), "{stderr}");
    // The sick rank said it left: the leader freed its rank at once,
    // without waiting for the heartbeat timeout; a healthy rank 1 forms
    // the group.
    let leader_log = std::fs::read_to_string(dir.path().join("leader.log")).unwrap();
    assert!(leader_log.contains("rank left"), "{leader_log}");
    let mut well = start(1, &healthy, log("well.log"));
    let _well_guard = Guard(vec![well.id() as i32]);
    poll_until("the group formed", Duration::from_secs(10), || {
        status(&group.endpoints_of(0)).filter(|s| s["phase"] == "serve" && s["ready"] == true)
    });
    signal(well.id() as i32, Sig::TERM);
    signal(leader.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut well, Duration::from_secs(20)).success());
    assert!(wait_exit(&mut leader, Duration::from_secs(20)).success());
}

/// Scale, drain, prefetch and the timeline on the native backend, with the
/// vLLM stand-in (a headless rank serves no API): the weights are warmed
/// and every startup step is in `/status`; `local --backend native --scale` samples
/// the leader's `/metrics`, the scale policy's recommendation rises with a
/// burst of streaming completions (in `/status` and
/// `orchestrator_desired_replicas`), and on SIGTERM `/readyz` turns false
/// while a completion in flight finishes before the group stops.
#[test]
#[ignore = "needs the orchestrator binary and python3: run by `cargo xtask test`"]
fn a_native_group_samples_load_and_drains_before_a_restart_and_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoints_port, serve_port) = (free_port(), free_port());
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let server = format!("127.0.0.196:{serve_port}");
    let log = dir.path().join("local.log");
    let weights = dir.path().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::write(weights.join("model.safetensors"), vec![7u8; 3 << 20]).unwrap();
    let mut local = local_native(&log)
        .arg("--prefetch")
        .arg(&weights)
        .args(["--head-ip", "127.0.0.196", "--model", "tiny"])
        // The stand-in on PATH, whatever ORCHESTRATOR_VLLM_BIN names.
        .args(["--vllm-bin", "vllm"])
        .args(["--serve-port", &serve_port.to_string()])
        .args(["--endpoints-port", &endpoints_port.to_string()])
        .args([
            "--health-interval-ms",
            "300",
            "--generation-interval-ms",
            "2000",
        ])
        .args(["--drain-timeout-seconds", "30", "--scale"])
        .args(["--scale-interval-ms", "300", "--scale-window-seconds", "5"])
        .args(["--scale-param", "target-requests-per-replica=2"])
        .env("PATH", stand_in_vllm_path(dir.path()))
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let scale = |s: &serde_json::Value| s["scale"]["desired-replicas"].as_u64();
    let serving = poll_until("serving, idle", Duration::from_secs(60), || {
        status(&endpoints).filter(|s| {
            s["ready"] == true
                && scale(s) == Some(1)
                && s["timeline"].to_string().contains("first-completion")
        })
    });
    // The weights were warmed, and the timeline has every step of the
    // group's startup.
    assert_eq!(serving["prefetch"]["state"], "done", "{serving}");
    assert_eq!(serving["prefetch"]["bytes-done"], 3 << 20, "{serving}");
    let steps: Vec<&str> = serving["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    for step in [
        "node-joined",
        "ready-decision",
        "launch",
        "server-process-up",
        "first-health-ok",
        "first-completion",
    ] {
        assert!(steps.contains(&step), "{step} missing from {steps:?}");
    }
    let burst: Vec<_> = (0..6)
        .map(|_| stream_completion(server.clone(), "tiny", 60))
        .collect();
    let raised = poll_until(
        "the burst's recommendation",
        Duration::from_secs(20),
        || status(&endpoints).filter(|s| scale(s).is_some_and(|d| d >= 2)),
    );
    assert_eq!(raised["phase"], "serve", "{raised}");
    let metrics = http_get(&endpoints, "/metrics");
    let desired = metric_value(&metrics, "orchestrator_desired_replicas");
    assert!(desired.is_some_and(|v| v >= 2.0), "{metrics}");
    for (_, stream) in burst {
        assert!(stream.join().unwrap().contains("data: [DONE]"));
    }
    // A group restart with a completion in flight: rank 1's process is
    // killed; /readyz turns false, the completion finishes, then the
    // group starts again.
    let (first_chunk, stream) = stream_completion(server.clone(), "tiny", 60);
    first_chunk
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    let rank1 = pid_with_args(&[&stand_in_vllm_script(dir.path()), "--node-rank 1"])
        .expect("rank 1's process");
    signal(rank1, Sig::KILL);
    poll_until(
        "/readyz false while draining before the restart",
        Duration::from_secs(5),
        || (!http_get(&endpoints, "/readyz").contains("200 OK")).then_some(()),
    );
    let streamed = stream.join().unwrap();
    assert!(streamed.contains("data: [DONE]"), "{streamed}");
    poll_until(
        "serving again after the restart",
        Duration::from_secs(60),
        || status(&endpoints).filter(|s| s["ready"] == true && s["restarts"] == 1),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let restart = text
        .find("restarting the serving process")
        .expect("the restart");
    let drained = text[restart..]
        .find("drained: every request in flight finished")
        .expect("drained before the restart");
    let started_again = text[restart..]
        .find("told every rank to start")
        .expect("the group started again");
    assert!(drained < started_again, "{text}");
    // SIGTERM with a completion in flight: it finishes, then all stops.
    let (first_chunk, stream) = stream_completion(server.clone(), "tiny", 30);
    first_chunk
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream started");
    signal(local.id() as i32, Sig::TERM);
    poll_until(
        "/readyz false while draining",
        Duration::from_secs(3),
        || (!http_get(&endpoints, "/readyz").contains("200 OK")).then_some(()),
    );
    let streamed = stream.join().unwrap();
    assert!(streamed.contains("data: [DONE]"), "{streamed}");
    assert!(wait_exit(&mut local, Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("drained: every request in flight finished"),
        "{text}"
    );
    assert_nothing_left(&["127.0.0.196", &stand_in_vllm_script(dir.path())]);
}

/// Copy-to on the native backend: every rank copies the model's directory
/// to a local one while the group forms, reports the copy's completion at
/// once, and the leader launches the group from the copies (waiting for
/// a copy still in progress at the ready decision).
#[test]
#[ignore = "needs the orchestrator binary and python3: run by `cargo xtask test`"]
fn a_native_group_serves_from_every_ranks_local_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoints_port, serve_port) = (free_port(), free_port());
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = dir.path().join("local.log");
    let weights = dir.path().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    std::fs::write(weights.join("model.safetensors"), vec![7u8; 32 << 20]).unwrap();
    std::fs::write(weights.join("config.json"), "{}").unwrap();
    let copy = dir.path().join("local-disk/weights");
    let mut local = local_native(&log)
        .arg("--prefetch")
        .arg(&weights)
        .arg("--prefetch-copy-to")
        .arg(&copy)
        .args(["--head-ip", "127.0.0.198", "--model"])
        .arg(&weights)
        // At the ready decision, not early from the shared path.
        .args(["--launch-param", "early-launch=false"])
        .args(["--vllm-bin", "vllm"])
        .args(["--serve-port", &serve_port.to_string()])
        .args(["--endpoints-port", &endpoints_port.to_string()])
        .env("PATH", stand_in_vllm_path(dir.path()))
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let serving = poll_until("serving", Duration::from_secs(60), || {
        status(&endpoints).filter(|s| s["ready"] == true)
    });
    assert_eq!(serving["prefetch"]["state"], "done", "{serving}");
    assert_eq!(
        serving["prefetch"]["copy-to"].as_str(),
        Some(copy.display().to_string().as_str()),
        "{serving}"
    );
    assert_eq!(
        std::fs::read(copy.join("model.safetensors")).unwrap().len(),
        32 << 20
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "serving the model from the local copies at {}",
            copy.display()
        )) && text.contains(&format!("launching: vllm serve {} ", copy.display())),
        "{text}"
    );
    // Every rank's part names the copy.
    let rank1 = text
        .lines()
        .find(|l| l.contains("rank's plan") && l.contains("--node-rank 1"))
        .unwrap_or_default();
    assert!(rank1.contains(&copy.display().to_string()), "{text}");
    signal(local.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut local, Duration::from_secs(30)).success());
    assert_nothing_left(&["127.0.0.198"]);
}

/// Node health in `local --backend native`: the leader's process checks
/// every rank it runs (the NVML stand-in reports XID 79 on the GPU they
/// share), so no rank counts and the leader says why, naming rank 1.
#[test]
#[ignore = "needs the orchestrator binary and the NVML stand-in: run by `cargo xtask test`"]
fn local_native_checks_every_ranks_node_health() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = dir.path().join("local.log");
    let faulty = dir.path().join("nvml-xid.json");
    std::fs::write(
        &faulty,
        r#"{"gpus": [{}], "xids": [{"gpu": 0, "xid": 79}]}"#,
    )
    .unwrap();
    let mut local = local_native(&log)
        .args(["--head-ip", "127.0.0.197", "--timeout", "60"])
        .args(["--endpoints-port", &endpoints_port.to_string()])
        .env("ORCHESTRATOR_NVML_LIBRARY", nvml_standin_library())
        .env("NVML_STANDIN_STATE", &faulty)
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    // Its plugins are compiled without a cache: under a loaded machine
    // that alone can take tens of seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let now = status(&endpoints).unwrap_or_default();
        if now["last-readiness"]
            .as_str()
            .is_some_and(|r| r.contains("XID 79"))
            && now["node-health"].to_string().contains("rank-1")
        {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never said why the ranks do not count; /status: {now}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen["phase"], "wait", "{seen}");
    assert_eq!(seen["ready"], false, "{seen}");
    let judged = seen["node-health"].to_string();
    assert!(judged.contains("unhealthy"), "{judged}");
    signal(local.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut local, Duration::from_secs(20)).success());
}

/// The leader's pod is lost while the group serves (its orchestrator and
/// its vLLM rank killed): rank 1 notices the silence, stops its own rank
/// and registers again; a new leader forms the group again and it serves.
#[test]
#[ignore = "needs the orchestrator binary and python3: run by `cargo xtask test`"]
fn a_lost_leader_stops_the_ranks_and_a_new_leader_forms_the_group_again() {
    let dir = tempfile::tempdir().unwrap();
    // The vLLM stand-in as the launch policy's program.
    stand_in_vllm_path(dir.path());
    let vllm = dir.path().join("bin/vllm");
    let group = NativeGroup::new(
        env!("CARGO_BIN_EXE_orchestrator"),
        dir.path(),
        190,
        2,
        "tiny",
        &vllm.display().to_string(),
    );
    let mut leader = group.start(0, 0);
    let mut worker = group.start(1, 0);
    let mut guard = Guard(vec![leader.id() as i32, worker.id() as i32]);
    group.until_serving(Duration::from_secs(60));
    // (The stand-in's rank 0 serves without waiting for the others.)
    let (rank0, rank1) = poll_until("both ranks' servers", Duration::from_secs(30), || {
        group.server_pid(0).zip(group.server_pid(1))
    });
    // The leader's pod is gone: its orchestrator and its vLLM.
    signal(leader.id() as i32, Sig::KILL);
    signal_group(rank0, Sig::KILL);
    let _ = leader.wait();
    poll_until("rank 1's vLLM stopped", Duration::from_secs(20), || {
        NativeGroup::left_in(&[rank1]).is_empty().then_some(())
    });
    let worker_log = dir.path().join("rank-1-0.log");
    let text = std::fs::read_to_string(&worker_log).unwrap();
    assert!(
        text.contains("has not answered for")
            && text.contains("this rank stopped, registering again"),
        "{text}"
    );
    // A new leader: rank 1 registers with it and the group serves again.
    let mut leader = group.start(0, 1);
    guard.0.push(leader.id() as i32);
    group.until_serving(Duration::from_secs(60));
    let (new0, new1) = poll_until("both ranks' new servers", Duration::from_secs(30), || {
        group
            .server_pid(0)
            .zip(group.server_pid(1))
            .filter(|(_, new1)| *new1 != rank1)
    });
    signal(leader.id() as i32, Sig::TERM);
    signal(worker.id() as i32, Sig::TERM);
    assert!(wait_exit(&mut leader, Duration::from_secs(30)).success());
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    let left = NativeGroup::left_in(&[rank0, rank1, new0, new1]);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The issue's own case: vLLM refuses to start on every rank (here made
/// certain with `--gpu-memory-utilization 0.999`: the CPU build reserves
/// that share of the node's memory, and some is always in use). The
/// leader keeps the first failure with its cause (rank, stage, exception,
/// last lines), counts identical ones, and says so in one log line and an
/// Event, instead of only "exited with code 1". The health policy stops
/// after the second identical failure here (`stop-after-identical-failures
/// = 2`; its default of 3 is the policy's own test): one start fewer.
#[test]
#[ignore = "needs vLLM: run by `cargo xtask test`"]
fn a_rank_that_fails_to_start_is_named_with_its_stage_and_exception_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = dir.path().join("local.log");
    let termination = dir.path().join("termination-log");
    let mut local = local_native(&log)
        .args(["--head-ip", "127.0.0.194", "--timeout", "120"])
        .args(["--endpoints-port", &endpoints_port.to_string()])
        .args(["--model", &var("ORCHESTRATOR_TINY_MODEL")])
        .args(["--serve-port", &free_port().to_string(), "--tp", "2"])
        .args(["--vllm-arg=--max-model-len", "--vllm-arg=256"])
        .args([
            "--vllm-arg=--dtype",
            "--vllm-arg=bfloat16",
            "--vllm-arg=--enforce-eager",
        ])
        .args(["--vllm-arg=--gpu-memory-utilization", "--vllm-arg=0.999"])
        .args(["--health-param", "stop-after-identical-failures=2"])
        .env_remove("VLLM_CPU_KVCACHE_SPACE")
        .env("ORCHESTRATOR_TERMINATION_LOG", &termination)
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    // The orchestrator exits on its own after the second failure, with
    // the cause; /status and /metrics are read while it runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(420);
    let mut seen = serde_json::Value::Null;
    let mut failures = 0.0;
    let exited = loop {
        if let Some(now) = status(&endpoints) {
            if now["first-failure"]["exception"].is_string() {
                let metrics = http_get(&endpoints, "/metrics");
                failures = metrics
                    .lines()
                    .find_map(|l| l.strip_prefix("orchestrator_server_startup_failures_total "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(failures);
            }
            seen = now;
        }
        if let Some(how) = local.try_wait().unwrap() {
            break how;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stop after identical failures; /status: {seen}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("/status: {seen}");
    assert_eq!(
        exited.code(),
        Some(1),
        "stopped with exit 1: {exited:?}\n{text}"
    );
    assert!(failures >= 1.0, "counted on /metrics: {failures}");
    let first = &seen["first-failure"];
    let exception = first["exception"].as_str().unwrap_or_default();
    assert!(
        exception.starts_with("ValueError: Available memory on node"),
        "{first}"
    );
    assert!(first["rank"].as_u64().is_some_and(|r| r <= 1), "{first}");
    // vLLM was imported (its logger wrote) and failed before it joined
    // the distributed group.
    assert_eq!(first["stage"], "imports-done", "{first}");
    assert_eq!(first["exit"]["code"], 1, "{first}");
    let lines = first["last-lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 20, "{first}");
    assert!(
        lines.iter().any(|l| l
            .as_str()
            .unwrap_or_default()
            .contains("gpu-memory-utilization")),
        "the cause's lines are kept: {first}"
    );
    // One line says what failed, where, and why; the second start failed
    // the same way, was counted, and the policy stopped.
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("startup failed: rank "))
        .collect();
    assert!(
        failed.len() == 2
            && failed
                .iter()
                .all(|l| l.contains("ValueError: Available memory")),
        "two startup-failed lines, each with the cause:\n{text}"
    );
    assert!(
        !failed[0].contains("times in a row") && failed[1].contains("(2 times in a row)"),
        "the second is counted:\n{text}"
    );
    assert!(
        text.contains("failed to start 2 times in a row with the same cause"),
        "the policy's stop is logged:\n{text}"
    );
    assert!(
        !text.contains("3 times in a row"),
        "no third try after the stop:\n{text}"
    );
    // Kubernetes shows the cause as the pod's termination message.
    let message = std::fs::read_to_string(&termination).unwrap_or_default();
    assert!(
        message.contains("ValueError: Available memory"),
        "termination message: {message}"
    );
}

/// A native rank on another node (here: another orchestrator run's
/// member) stopped during its start: the leader names it (its member
/// reports the process stopped), asks its orchestrator for its stacks,
/// and hands the stall with the rank's own top frames to the health
/// policy (`on-stall=stop`: exit 1). The member keeps the whole dump in a
/// file of its own node's stacks folder.
#[test]
#[ignore = "needs the orchestrator binary, python3 and ORCHESTRATOR_PY_SPY_BIN: run by `cargo xtask test`"]
fn a_stopped_rank_is_named_with_the_stacks_its_own_orchestrator_took() {
    let py_spy = var("ORCHESTRATOR_PY_SPY_BIN");
    let dir = tempfile::tempdir().unwrap();
    let endpoints_port = free_port();
    let log = dir.path().join("local.log");
    let stacks = dir.path().join("stacks");
    let mut local = local_native(&log)
        .args(["--head-ip", "127.0.0.193", "--model", "tiny"])
        .args(["--vllm-bin", "vllm"])
        .args(["--serve-port", &free_port().to_string()])
        .args(["--endpoints-port", &endpoints_port.to_string()])
        .args(["--health-interval-ms", "300"])
        .args(["--stage-deadline", "process-up=4"])
        .args(["--health-param", "on-stall=stop"])
        .arg("--py-spy")
        .arg(&py_spy)
        .arg("--stacks-dir")
        .arg(&stacks)
        .env("PATH", stand_in_vllm_path(dir.path()))
        // Both ranks sit before their imports; rank 1 is then stopped.
        .env("STAND_IN_MODE", "slow-start=300")
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let rank1 = poll_until("rank 1's process", Duration::from_secs(30), || {
        pid_with_args(&[&stand_in_vllm_script(dir.path()), "--node-rank 1"])
    });
    // Stopped once its interpreter runs (py-spy reads the interpreter's
    // state from memory).
    std::thread::sleep(Duration::from_millis(1500));
    let stopped_at = std::time::Instant::now();
    signal(rank1, Sig::STOP);
    let exited = wait_exit(&mut local, Duration::from_secs(40));
    let took = stopped_at.elapsed();
    signal(rank1, Sig::CONT);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exited.code(), Some(1), "{exited:?}\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("startup stalled:"))
        .unwrap_or_else(|| panic!("no stall line:\n{text}"));
    assert!(
        line.contains("rank 1's server on 127.0.0.193"),
        "the stopped rank named: {line}"
    );
    assert!(line.contains("process-up"), "{line}");
    assert!(line.contains("stand_in_vllm.py:"), "its own frames: {line}");
    assert!(
        text.contains("the leader found this rank's server"),
        "rank 1's orchestrator took the stacks: {text}"
    );
    // Deadline 4 s, the heartbeat's round trips and py-spy: within the
    // deadline plus 10 s.
    assert!(took < Duration::from_secs(4 + 10), "diagnosed in {took:?}");
    let files: Vec<_> = std::fs::read_dir(&stacks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let rank1_file = files
        .iter()
        .find(|p| p.to_string_lossy().contains("stall-rank1-"))
        .unwrap_or_else(|| panic!("rank 1's stacks file among {files:?}"));
    let dump = std::fs::read_to_string(rank1_file).unwrap();
    assert!(
        dump.contains("MainThread") && dump.contains("stand_in_vllm.py"),
        "{dump}"
    );
    assert!(line.contains(&rank1_file.display().to_string()), "{line}");
    assert_nothing_left(&["127.0.0.193", &stand_in_vllm_script(dir.path())]);
}

/// The gang preflight on the native backend: with `--preflight required`
/// every rank runs a timed Gloo all-reduce (the server's own Python,
/// torch) before the launch, and the result is in `/status` and the
/// timeline between the ready decision and the launch. A preflight that
/// cannot run (no such Python) stops the run before any server starts,
/// naming the ranks and the fix.
#[test]
#[ignore = "needs the orchestrator binary and vLLM's Python (torch): run by `cargo xtask test`"]
fn a_native_group_runs_its_gang_preflight_before_the_launch() {
    let vllm = var("ORCHESTRATOR_VLLM_BIN");
    let python = std::path::Path::new(&vllm).with_file_name("python");
    let dir = tempfile::tempdir().unwrap();
    let run = |python: &std::path::Path, log: &std::path::Path, endpoints_port: u16| {
        local_native(log)
            .args(["--head-ip", "127.0.0.192", "--model", "tiny"])
            .args(["--vllm-bin", "vllm"])
            .args(["--serve-port", &free_port().to_string()])
            .args(["--endpoints-port", &endpoints_port.to_string()])
            .args([
                "--preflight",
                "required",
                "--preflight-timeout-seconds",
                "20",
            ])
            .arg("--preflight-python")
            .arg(python)
            .env("PATH", stand_in_vllm_path(dir.path()))
            .spawn()
            .unwrap()
    };
    // No such Python: exit 1 before any server starts.
    let log = dir.path().join("missing.log");
    let mut local = run(&dir.path().join("no-python"), &log, free_port());
    let _guard = Guard(vec![local.id() as i32]);
    let exited = wait_exit(&mut local, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exited.code(), Some(1), "{text}");
    assert!(
        text.contains("gang preflight failed: rank 0 on 127.0.0.192")
            && text.contains("set serve.preflight.python"),
        "{text}"
    );
    assert!(!text.contains("told every rank to start"), "{text}");
    assert_nothing_left(&["127.0.0.192", &stand_in_vllm_script(dir.path())]);
    // The server's own Python: the preflight passes, then the launch.
    let endpoints_port = free_port();
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log = dir.path().join("local.log");
    let mut local = run(&python, &log, endpoints_port);
    let _guard = Guard(vec![local.id() as i32]);
    let serving = poll_until(
        "serving after the preflight",
        Duration::from_secs(90),
        || status(&endpoints).filter(|s| s["ready"] == true),
    );
    let preflight = &serving["preflight"];
    assert_eq!(preflight["passed"], true, "{preflight}");
    let ranks = preflight["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), 2, "{preflight}");
    for rank in ranks {
        assert_eq!(rank["backend"], "gloo", "{rank}");
        assert_eq!(rank["bytes"], 4 << 20, "{rank}");
        assert!(rank["allreduce-ms"].as_f64().is_some(), "{rank}");
    }
    assert!(ranks[0]["p2p-ms"]["1"].as_f64().is_some(), "{preflight}");
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
    assert!(wait_exit(&mut local, Duration::from_secs(30)).success());
    assert_nothing_left(&["127.0.0.192", &stand_in_vllm_script(dir.path())]);
}
