//! `orchestrator local`, `wait` and `run` against real Ray 2.60, as a user
//! runs them. Each test uses its own addresses (127.0.0.x), ports and temp
//! dir, and checks that nothing it started is left running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Free ports for one test: GCS, agents, metrics (node i uses +i).
fn ports() -> (String, String, String) {
    (
        free_port().to_string(),
        free_port().to_string(),
        free_port().to_string(),
    )
}

/// A head at `ip` expecting `nodes` nodes, on the ports given (as from
/// [`ports`]), its temp dir `/tmp/ray-t<gcs>`.
fn head_node(
    ip: &str,
    gcs: &str,
    agent: &str,
    metrics: &str,
    endpoints: &str,
    nodes: u32,
) -> TestNode {
    TestNode::head(ip).with(|c| {
        c.ray.gcs_port = gcs.parse().unwrap();
        c.ray.temp_dir = Some(format!("/tmp/ray-t{gcs}").into());
        c.ray.dashboard_agent_listen_port = Some(agent.parse().unwrap());
        c.ray.metrics_export_port = Some(metrics.parse().unwrap());
        c.endpoints_port = endpoints.parse().unwrap();
        c.cluster.nodes = Some(nodes);
        c.cluster.wait_timeout_seconds = 120;
    })
}

fn orchestrator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    c.env("ORCHESTRATOR_RAY_BIN", ray_bin())
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true");
    c
}

/// Waits until `orchestrator wait` says the cluster at `address` has `nodes`.
fn wait_ready(address: &str, nodes: u32, timeout: u64) -> Output {
    wait_with(address, nodes, timeout, &[])
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn local_forms_a_three_node_cluster_and_leaves_nothing_behind() {
    let (gcs, agent, metrics) = ports();
    let temp = format!("/tmp/ray-t{gcs}");
    let child = orchestrator()
        .args([
            "local",
            "--workers",
            "2",
            "--head-ip",
            "127.0.0.50",
            "--gcs-port",
            &gcs,
            "--agent-port",
            &agent,
            "--metrics-port",
            &metrics,
            "--temp-dir",
            &temp,
            "--memory-mib",
            "500",
            "--object-store-mib",
            "80",
            "--exit-when-ready",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_deadline(child, Duration::from_secs(180));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("cluster ready"), "{stdout}");
    for ip in ["127.0.0.50", "127.0.0.51", "127.0.0.52"] {
        assert!(stdout.contains(ip), "{ip} in {stdout}");
    }
    // Node health runs in `local` too: every node is checked.
    let checked = stderr
        .matches("node health: reporting for this Ray node")
        .count();
    assert_eq!(checked, 3, "{stderr}");
    assert_nothing_left(&[&temp, "127.0.0.50", "127.0.0.51", "127.0.0.52"]);
}

/// `orchestrator wait --nodes N` with extra arguments.
fn wait_with(address: &str, nodes: u32, timeout: u64, extra: &[&str]) -> Output {
    let child = orchestrator()
        .args(["wait", "--address", address, "--nodes", &nodes.to_string()])
        .args(["--timeout", &timeout.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_deadline(child, Duration::from_secs(timeout + 30))
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn wait_does_not_count_a_frozen_node_under_rays_default_health_checks() {
    let (gcs, agent, metrics) = ports();
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.64:{gcs}");
    let (agent2, metrics2, head_endpoints) = ports();
    let worker_endpoints = free_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    // Ray's own health-check settings (no RAY_health_check_*): the GCS
    // lists a frozen node as alive for about a minute.
    let head_config = head_node("127.0.0.64", &gcs, &agent, &metrics, &head_endpoints, 2)
        .write(dir.path(), "head.toml");
    let head = orchestrator()
        .args(["run", "--config", head_config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![head.id() as i32]);
    let worker = orchestrator()
        .args(["run", "--role", "worker"])
        .args(["--set", &format!("endpoints-port={worker_endpoints}")])
        .args(["--set", &format!("ray.gcs-address=\"{address}\"")])
        .args(["--set", "ray.node-ip=\"127.0.0.65\""])
        .args(["--set", "ray.memory=500000000"])
        .args(["--set", "ray.object-store-memory=80000000"])
        .args([
            "--set",
            &format!("ray.dashboard-agent-listen-port={agent2}"),
        ])
        .args(["--set", &format!("ray.metrics-export-port={metrics2}")])
        .args(["--set", "ray.stop-grace-seconds=5"])
        .args(["--set", &format!("ray.bin=\"{}\"", ray_bin())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    guard.0.push(worker.id() as i32);
    let ok = wait_ready(&address, 2, 120);
    assert!(ok.status.success(), "{:?}", text(&ok));

    let raylet = raylet_of("127.0.0.65").expect("the worker's raylet");
    signal(raylet, Sig::STOP);
    let frozen = std::time::Instant::now();
    // The GCS alone still says 2 alive: the old answer.
    let trusting = wait_with(&address, 2, 10, &["--raylet-answer-timeout", "0"]);
    assert!(trusting.status.success(), "{:?}", text(&trusting));
    // Asking the raylets: not ready, naming the silent node.
    let asking = wait_with(&address, 2, 8, &[]);
    let (stdout, stderr) = text(&asking);
    assert_eq!(asking.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("127.0.0.65") && stderr.contains("did not answer within 2.0 s"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 2 nodes alive"), "{stderr}");
    // Thawed while a wait runs: ready once it answers.
    let waiting = orchestrator()
        .args([
            "wait",
            "--address",
            &address,
            "--nodes",
            "2",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    signal(raylet, Sig::CONT);
    let thawed = std::time::Instant::now();
    let after = wait_with_deadline(waiting, Duration::from_secs(90));
    let (stdout, stderr) = text(&after);
    assert!(after.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("not counted until it answers") && stderr.contains("answers again"),
        "{stderr}"
    );
    assert!(thawed.elapsed() < Duration::from_secs(10), "{stderr}");
    eprintln!(
        "FIGURE frozen for {:.0} s under Ray's default health checks: wait trusting the GCS said ready; asking the raylets it said not ready, and ready {:.1} s after the thaw",
        thawed.duration_since(frozen).as_secs_f64(),
        thawed.elapsed().as_secs_f64()
    );

    signal(worker.id() as i32, Sig::TERM);
    let out = wait_with_deadline(worker, Duration::from_secs(60));
    assert!(out.status.success(), "worker: {:?}", text(&out));
    signal(head.id() as i32, Sig::TERM);
    let out = wait_with_deadline(head, Duration::from_secs(60));
    assert!(out.status.success(), "head: {:?}", text(&out));
    assert_nothing_left(&[&temp, "127.0.0.64", "127.0.0.65"]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn wait_command_exits_0_when_ready_and_1_with_a_diagnosis_naming_what_is_missing() {
    let (gcs, agent, metrics) = ports();
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.60:{gcs}");
    let local = orchestrator()
        .args([
            "local",
            "--workers",
            "1",
            "--head-ip",
            "127.0.0.60",
            "--gcs-port",
            &gcs,
            "--agent-port",
            &agent,
            "--metrics-port",
            &metrics,
            "--temp-dir",
            &temp,
            "--memory-mib",
            "500",
            "--object-store-mib",
            "80",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(vec![local.id() as i32]);
    let ok = wait_ready(&address, 2, 90);
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("ready after"), "{stdout}");

    let missing = wait_ready(&address, 3, 3);
    let (_, stderr) = text(&missing);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not ready after 3"), "{stderr}");
    assert!(
        stderr.contains("nodes: 2 of 3 expected alive; missing 1 node"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 of 3 nodes alive"),
        "the policy's reason: {stderr}"
    );

    let bad = output_within(
        orchestrator().args(["wait", "--address", &address, "--nodes", "0"]),
        Duration::from_secs(60),
    );
    assert_eq!(bad.status.code(), Some(2));
    let bad = output_within(
        orchestrator().args(["wait", "--address", &address]),
        Duration::from_secs(60),
    );
    assert_eq!(bad.status.code(), Some(2), "missing --nodes");

    signal(local.id() as i32, Sig::TERM);
    let out = wait_with_deadline(local, Duration::from_secs(30));
    assert!(out.status.success(), "{:?}", text(&out));
    assert_nothing_left(&[&temp, "127.0.0.60", "127.0.0.61"]);
}

fn nofile_soft_limit(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn run_head_and_kuberay_worker_raise_nofile_and_stop_cleanly() {
    let (gcs, agent, metrics) = ports();
    let (agent2, metrics2, endpoints) = ports();
    let temp = format!("/tmp/ray-t{gcs}");
    let dir = tempfile::tempdir().unwrap();
    let head_config = head_node("127.0.0.70", &gcs, &agent, &metrics, &endpoints, 2)
        .with(|c| {
            c.open_file_limit = 4321;
        })
        .write(dir.path(), "head.toml");
    // Start with a low soft limit, as a container often does; the
    // orchestrator must raise it for Ray's processes.
    let head = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && exec {} run --config {}",
            env!("CARGO_BIN_EXE_orchestrator"),
            head_config.display()
        ))
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![head.id() as i32]);

    // The worker starts from KubeRay's generated command, --block and all.
    let worker_config = TestNode::worker("127.0.0.71", "")
        .with(|c| {
            // Everything else from KUBERAY_GEN_RAY_START_CMD.
            c.ray.gcs_address = None;
            c.ray.num_cpus = None;
            c.ray.use_kuberay_command = true;
            c.ray.gcs_wait_seconds = 120;
            c.ray.dashboard_agent_listen_port = Some(agent2.parse().unwrap());
            c.ray.metrics_export_port = Some(metrics2.parse().unwrap());
            c.open_file_limit = 4321;
        })
        .write(dir.path(), "worker.toml");
    let kuberay = format!(
        "ray start  --address=127.0.0.70:{gcs}  --block  --dashboard-agent-listen-port=52365  --metrics-export-port=8080  --num-cpus=1 "
    );
    let worker = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && exec {} run --config {}",
            env!("CARGO_BIN_EXE_orchestrator"),
            worker_config.display()
        ))
        .env("KUBERAY_GEN_RAY_START_CMD", &kuberay)
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    guard.0.push(worker.id() as i32);

    let ready = wait_ready(&format!("127.0.0.70:{gcs}"), 2, 120);
    assert!(ready.status.success(), "{:?}", text(&ready));

    let raylets: Vec<i32> = ["127.0.0.70", "127.0.0.71"]
        .iter()
        .filter_map(|ip| raylet_of(ip))
        .collect();
    assert_eq!(raylets.len(), 2, "one raylet per node");
    for pid in raylets {
        assert_eq!(
            nofile_soft_limit(pid),
            4321,
            "raylet {pid} inherited the raised limit"
        );
    }
    // The head's endpoints: alive, and ready once the cluster is.
    let endpoints: u16 = endpoints.parse().unwrap();
    let status = status_until(endpoints, Duration::from_secs(10), |s| s["ready"] == true);
    assert_eq!(status["phase"], "serve", "{status}");
    assert_eq!(status["nodes-alive"], 2, "{status}");
    let at = format!("127.0.0.1:{endpoints}");
    assert!(http_get(&at, "/livez").contains("ok"));
    assert!(http_get(&at, "/metrics").contains("orchestrator_nodes_alive 2"));

    // KubeRay's --block was dropped and the configured ports won.
    let worker_raylet = processes_with("--node_ip_address=127.0.0.71");
    assert!(!worker_raylet.is_empty());

    signal(worker.id() as i32, Sig::TERM);
    let out = wait_with_deadline(worker, Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "worker exits 0 on SIGTERM: {stderr}");
    assert!(
        stderr.contains(&format!("--dashboard-agent-listen-port={agent2}"))
            && !stderr.contains("--block"),
        "{stderr}"
    );
    assert_nothing_left(&["127.0.0.71"]);

    signal(head.id() as i32, Sig::TERM);
    let out = wait_with_deadline(head, Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "head exits 0 on SIGTERM: {stderr}");
    assert!(stderr.contains("cluster ready"), "{stderr}");
    assert_nothing_left(&[&temp, "127.0.0.70"]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn worker_exits_1_when_its_raylet_dies() {
    let (gcs, agent, metrics) = ports();
    let (agent2, metrics2, _) = ports();
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.80:{gcs}");
    let dir = tempfile::tempdir().unwrap();
    // Where Kubernetes would read the pod's termination message.
    let termination_log = dir.path().join("termination-log");
    let local = orchestrator()
        .args([
            "local",
            "--workers",
            "0",
            "--head-ip",
            "127.0.0.80",
            "--gcs-port",
            &gcs,
            "--agent-port",
            &agent,
            "--metrics-port",
            &metrics,
            "--temp-dir",
            &temp,
            "--memory-mib",
            "500",
            "--object-store-mib",
            "80",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![local.id() as i32]);
    assert!(wait_ready(&address, 1, 90).status.success());
    let worker = orchestrator()
        .args([
            "run",
            "--role",
            "worker",
            "--set",
            "endpoints-port=0",
            "--set",
            &format!("ray.gcs-address=\"{address}\""),
            "--set",
            "ray.node-ip=\"127.0.0.81\"",
            "--set",
            "ray.memory=500000000",
            "--set",
            "ray.object-store-memory=80000000",
            "--set",
            &format!("ray.dashboard-agent-listen-port={agent2}"),
            "--set",
            &format!("ray.metrics-export-port={metrics2}"),
            "--set",
            &format!("ray.bin=\"{}\"", ray_bin()),
        ])
        .env("ORCHESTRATOR_TERMINATION_LOG", &termination_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    guard.0.push(worker.id() as i32);
    let mut worker = worker;
    let log = Captured::stderr_of(&mut worker);
    assert!(wait_ready(&address, 2, 90).status.success());
    // Once the orchestrator logs the node as started, it watches its
    // daemons (the raylet is then re-parented to it).
    log.wait_for("Ray node started", Duration::from_secs(60));
    let raylet = raylet_of("127.0.0.81").expect("the worker's raylet");
    assert_eq!(parent_of(raylet), Some(worker.id() as i32));
    signal(raylet, Sig::KILL);
    let out = wait_with_deadline(worker, Duration::from_secs(30));
    let stderr = log.text();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("raylet") && stderr.contains("signal 9"),
        "{stderr}"
    );
    let message = std::fs::read_to_string(&termination_log).unwrap_or_default();
    assert!(
        message.contains("raylet") && message.contains("signal 9"),
        "the termination message says why: {message:?}"
    );
    assert_nothing_left(&["127.0.0.81"]);
    signal(local.id() as i32, Sig::TERM);
    assert!(
        wait_with_deadline(local, Duration::from_secs(30))
            .status
            .success()
    );
    assert_nothing_left(&[&temp, "127.0.0.80"]);
}

/// `/readyz` as an HTTP status code (0 when it does not answer) and body.
fn readyz(endpoints: &str) -> (u16, String) {
    let reply = http_get(endpoints, "/readyz");
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

fn readyz_until(endpoints: &str, want: u16, needle: &str, limit: Duration) -> String {
    poll_until(
        &format!("/readyz {want} with {needle:?} on {endpoints}"),
        limit,
        || {
            let (code, body) = readyz(endpoints);
            (code == want && body.contains(needle)).then_some(body)
        },
    )
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn readyz_follows_the_gcs_on_the_head_and_on_workers() {
    let (gcs, agent, metrics) = ports();
    let (agent2, metrics2, head_endpoints) = ports();
    let (agent3, metrics3, worker_endpoints) = ports();
    let worker2_endpoints = free_port().to_string();
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.84:{gcs}");
    let dir = tempfile::tempdir().unwrap();
    // A head with nothing to serve, expecting 2 nodes; Ray's health checks
    // made quick so the GCS declares a frozen node dead in seconds.
    let head_config = head_node("127.0.0.84", &gcs, &agent, &metrics, &head_endpoints, 2)
        .with(|c| {
            for (key, value) in [
                ("RAY_health_check_initial_delay_ms", "1000"),
                ("RAY_health_check_period_ms", "500"),
                ("RAY_health_check_timeout_ms", "500"),
                ("RAY_health_check_failure_threshold", "3"),
            ] {
                c.ray.env.insert(key.into(), value.into());
            }
        })
        .write(dir.path(), "head.toml");
    let head = orchestrator()
        .args(["run", "--config", head_config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![head.id() as i32]);
    let worker = |ip: &str, agent: &str, metrics: &str, endpoints: &str| {
        orchestrator()
            .args([
                "run",
                "--role",
                "worker",
                "--set",
                &format!("endpoints-port={endpoints}"),
                "--set",
                &format!("ray.gcs-address=\"{address}\""),
                "--set",
                &format!("ray.node-ip=\"{ip}\""),
                "--set",
                "ray.memory=500000000",
                "--set",
                "ray.object-store-memory=80000000",
                "--set",
                &format!("ray.dashboard-agent-listen-port={agent}"),
                "--set",
                &format!("ray.metrics-export-port={metrics}"),
                "--set",
                "ray.stop-grace-seconds=5",
                "--set",
                &format!("ray.bin=\"{}\"", ray_bin()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut w1 = worker("127.0.0.85", &agent2, &metrics2, &worker_endpoints);
    guard.0.push(w1.id() as i32);
    let w1_log = Captured::stderr_of(&mut w1);
    let head_at = format!("127.0.0.1:{head_endpoints}");
    let w1_at = format!("127.0.0.1:{worker_endpoints}");
    readyz_until(&head_at, 200, "ready", Duration::from_secs(120));
    readyz_until(&w1_at, 200, "ready", Duration::from_secs(60));
    w1_log.wait_for("Ray node started", Duration::from_secs(30));

    // 1. The worker's raylet frozen: the GCS declares its node dead; the
    // worker says so at once (not when its raylet exits), the head counts
    // 1 of 2.
    let raylet = raylet_of("127.0.0.85").expect("the worker's raylet");
    signal(raylet, Sig::STOP);
    let body = readyz_until(&w1_at, 503, "declared this node", Duration::from_secs(30));
    assert!(body.contains("127.0.0.85"), "{body}");
    readyz_until(&head_at, 503, "1 of 2 nodes alive", Duration::from_secs(30));
    signal(raylet, Sig::KILL);
    let out = wait_with_deadline(w1, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", w1_log.text());

    // 2. A new worker: the head is ready again.
    let mut w2 = worker("127.0.0.86", &agent3, &metrics3, &worker2_endpoints);
    guard.0.push(w2.id() as i32);
    let w2_log = Captured::stderr_of(&mut w2);
    let w2_at = format!("127.0.0.1:{worker2_endpoints}");
    readyz_until(&head_at, 200, "ready", Duration::from_secs(90));
    readyz_until(&w2_at, 200, "ready", Duration::from_secs(30));

    // 3. The head's GCS gone: the worker says so within seconds, long
    // before its raylet gives up.
    let gcs_server = processes_with(&format!("--gcs_server_port={gcs}"))
        .into_iter()
        .map(|(pid, _)| pid)
        .next()
        .expect("the GCS");
    let killed = std::time::Instant::now();
    signal(gcs_server, Sig::KILL);
    readyz_until(&w2_at, 503, "GCS connection lost", Duration::from_secs(20));
    assert!(killed.elapsed() < Duration::from_secs(20));
    let out = wait_with_deadline(head, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "the head's GCS died");
    signal(w2.id() as i32, Sig::TERM);
    let out = wait_with_deadline(w2, Duration::from_secs(60));
    assert!(out.status.code().is_some(), "{}", w2_log.text());
    assert_nothing_left(&[&temp, "127.0.0.84", "127.0.0.85", "127.0.0.86"]);
}

/// Host pids of the children of `parent`, with their state letter.
fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            found.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    found
}

#[test]
#[ignore = "needs Ray 2.60 and root (a PID namespace): run by `cargo xtask test`"]
fn as_pid_1_it_reaps_orphans_and_leaves_nothing_on_sigterm() {
    let (gcs, agent, metrics) = ports();
    let endpoints = free_port().to_string();
    let temp = format!("/tmp/ray-t{gcs}");
    let dir = tempfile::tempdir().unwrap();
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_orchestrator"))
        .args([
            "local",
            "--workers",
            "1",
            "--head-ip",
            "127.0.0.87",
            "--gcs-port",
            &gcs,
            "--agent-port",
            &agent,
            "--metrics-port",
            &metrics,
            "--temp-dir",
            &temp,
            "--memory-mib",
            "500",
            "--object-store-mib",
            "80",
            "--endpoints-port",
            &endpoints,
        ])
        .env("ORCHESTRATOR_RAY_BIN", ray_bin())
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(vec![unshare.id() as i32]);
    let mut unshare = unshare;
    let log = Captured::stderr_of(&mut unshare);
    let orchestrator = poll_until(
        "the orchestrator in its namespace",
        Duration::from_secs(10),
        || {
            children_of(unshare.id() as i32)
                .first()
                .map(|(pid, _)| *pid)
        },
    );
    guard.0.push(orchestrator);
    let nspid = std::fs::read_to_string(format!("/proc/{orchestrator}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(str::to_string)
        .unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "PID 1 of its namespace: {nspid}"
    );
    readyz_until(
        &format!("127.0.0.1:{endpoints}"),
        200,
        "ready",
        Duration::from_secs(120),
    );

    // Two orphans re-parented to it: one exits after 1 s (a zombie unless
    // reaped), one runs until it is told to stop and notes SIGTERM.
    let noted = dir.path().join("got-term");
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; while true; do sleep 0.2; done",
        noted.display()
    );
    let status = Command::new("nsenter")
        .args([
            "-t",
            &orchestrator.to_string(),
            "-p",
            "-m",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("sh -c \"{script}\" & sleep 1 & exit 0"))
        .status()
        .unwrap();
    assert!(status.success());
    poll_until(
        "the orphans re-parented to PID 1",
        Duration::from_secs(10),
        || {
            processes_with(&noted.display().to_string())
                .into_iter()
                .find(|(pid, _)| parent_of(*pid) == Some(orchestrator))
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let zombies: Vec<_> = children_of(orchestrator)
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "orphans reaped: {zombies:?}");

    signal(orchestrator, Sig::TERM);
    let out = wait_with_deadline(unshare, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", log.text());
    assert!(
        noted.exists(),
        "the orphan was stopped with SIGTERM by PID 1, not killed by the kernel:\n{}",
        log.text()
    );
    assert_nothing_left(&[
        &temp,
        "127.0.0.87",
        "127.0.0.88",
        &noted.display().to_string(),
    ]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn a_ray_head_left_by_a_sigkilled_orchestrator_is_stopped_by_the_next_one() {
    let (gcs, agent, metrics) = ports();
    let endpoints = free_port().to_string();
    let temp = format!("/tmp/ray-t{gcs}");
    let dir = tempfile::tempdir().unwrap();
    let config = head_node("127.0.0.87", &gcs, &agent, &metrics, &endpoints, 1)
        .with(|c| {
            c.cluster.wait_timeout_seconds = 60;
        })
        .write(dir.path(), "head.toml");
    let start = || {
        orchestrator()
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let at = format!("127.0.0.1:{endpoints}");
    let mut first = start();
    let mut guard = Guard(vec![first.id() as i32]);
    let first_log = Captured::stderr_of(&mut first);
    readyz_until(&at, 200, "ready", Duration::from_secs(90));
    let gcs_of = || {
        processes_with(&format!("--gcs_server_port={gcs}"))
            .into_iter()
            .map(|(pid, _)| pid)
            .next()
    };
    let old_gcs = gcs_of().expect("the GCS");
    let old_raylet = raylet_of("127.0.0.87").expect("the raylet");
    let record = format!("{temp}/orchestrator-head-127.0.0.87-{gcs}.json");
    assert!(
        std::path::Path::new(&record).is_file(),
        "{}",
        first_log.text()
    );

    // SIGKILL the orchestrator alone: its Ray head runs on unsupervised.
    signal(first.id() as i32, Sig::KILL);
    first.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        is_alive(old_gcs) && is_alive(old_raylet),
        "Ray outlives a SIGKILLed orchestrator"
    );

    // The next orchestrator stops what was left (by pid, not `ray stop`)
    // and starts a head of its own instead of failing "already running".
    let mut second = start();
    guard.0.push(second.id() as i32);
    let second_log = Captured::stderr_of(&mut second);
    readyz_until(&at, 200, "ready", Duration::from_secs(90));
    let log = second_log.text();
    assert!(
        log.contains("left its Ray node running: stopping it"),
        "{log}"
    );
    assert!(!is_alive(old_gcs) && !is_alive(old_raylet), "{log}");
    let new_gcs = gcs_of().expect("a new GCS");
    assert_ne!(new_gcs, old_gcs);

    // A clean stop removes the record: nothing for a third to act on.
    signal(second.id() as i32, Sig::TERM);
    let out = wait_with_deadline(second, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", second_log.text());
    assert!(
        !std::path::Path::new(&record).exists(),
        "record left after a clean stop"
    );
    assert_nothing_left(&[&temp, "127.0.0.87"]);
}

#[test]
#[ignore = "needs Ray 2.60: run by `cargo xtask test`"]
fn without_gcs_fault_tolerance_a_worker_rejoins_a_restarted_head_without_exiting() {
    let (gcs, agent, metrics) = ports();
    let (agent2, metrics2, head_endpoints) = ports();
    let worker_endpoints = free_port().to_string();
    let temp = format!("/tmp/ray-t{gcs}");
    let address = format!("127.0.0.88:{gcs}");
    let dir = tempfile::tempdir().unwrap();
    let head_config = head_node("127.0.0.88", &gcs, &agent, &metrics, &head_endpoints, 2)
        .write(dir.path(), "head.toml");
    let head_log = dir.path().join("head.log");
    let start_head = || {
        orchestrator()
            .args(["run", "--config", head_config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&head_log).unwrap())
            .spawn()
            .unwrap()
    };
    let mut head = start_head();
    let mut guard = Guard(vec![head.id() as i32]);
    let mut worker = orchestrator()
        .args([
            "run",
            "--role",
            "worker",
            "--set",
            &format!("endpoints-port={worker_endpoints}"),
            "--set",
            &format!("ray.gcs-address=\"{address}\""),
            "--set",
            "ray.node-ip=\"127.0.0.89\"",
            "--set",
            "ray.memory=500000000",
            "--set",
            "ray.object-store-memory=80000000",
            "--set",
            &format!("ray.dashboard-agent-listen-port={agent2}"),
            "--set",
            &format!("ray.metrics-export-port={metrics2}"),
            "--set",
            "ray.stop-grace-seconds=5",
            "--set",
            &format!("ray.bin=\"{}\"", ray_bin()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    guard.0.push(worker.id() as i32);
    let worker_log = Captured::stderr_of(&mut worker);
    let head_at = format!("127.0.0.1:{head_endpoints}");
    let worker_at = format!("127.0.0.1:{worker_endpoints}");
    readyz_until(&head_at, 200, "ready", Duration::from_secs(120));
    readyz_until(&worker_at, 200, "ready", Duration::from_secs(60));
    let old_raylet = raylet_of("127.0.0.89").expect("the worker's raylet");

    // The head pod dies and a new one starts, with no Redis behind its
    // GCS: a new cluster at the same address.
    kill_tree(head.id() as i32);
    head.wait().unwrap();
    let restarted = std::time::Instant::now();
    let head = start_head();
    guard.0.push(head.id() as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !worker_log.text().contains("in its table: a new cluster") {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not see the new cluster:\n{}\n--- new head:\n{}",
            worker_log.text(),
            std::fs::read_to_string(&head_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    readyz_until(&head_at, 200, "ready", Duration::from_secs(90));
    readyz_until(&worker_at, 200, "ready", Duration::from_secs(30));
    eprintln!(
        "FIGURE rejoin head_restart_to_ready_s={:.1}",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker's orchestrator exited"
    );
    let new_raylet = raylet_of("127.0.0.89").expect("the worker's new raylet");
    assert_ne!(new_raylet, old_raylet, "the worker's Ray node restarted");
    assert!(!is_alive(old_raylet), "the old raylet stopped");
    assert!(
        worker_log
            .text()
            .contains("restarting this node's Ray into it"),
        "{}",
        worker_log.text()
    );

    signal(head.id() as i32, Sig::TERM);
    let out = wait_with_deadline(head, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0));
    signal(worker.id() as i32, Sig::TERM);
    let out = wait_with_deadline(worker, Duration::from_secs(60));
    assert!(out.status.code().is_some(), "{}", worker_log.text());
    assert_nothing_left(&[&temp, "127.0.0.88", "127.0.0.89"]);
}
