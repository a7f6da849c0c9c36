//! `cargo xtask bench serve`: on a real local cluster (head + 1 worker,
//! real vLLM tensor-parallel over both), in one run:
//!
//! 1. the orchestrator (`orchestrator local ... --model`): time from the last
//!    node's registration with the GCS to the first successful completion;
//!    then the time from the worker's death (the GCS's end time for it) to
//!    the orchestrator's action (its restart counter moving);
//!    with early launch off;
//! 2. the origin document's flow on the same layout: the same nodes, then
//!    its shell loop corrected so it can end (`ray status`, count `Active:`
//!    nodes, `sleep 5`) followed by `vllm serve`: the same first measure;
//! 3. the orchestrator with early launch (the worker 25 s late, so that
//!    vLLM waits on its placement group first): the same first measure,
//!    then the serving process is killed: kill -> serving again (restart).
//!
//! The last line is `BENCH serve ...`. Needs ORCHESTRATOR_RAY_BIN,
//! ORCHESTRATOR_VLLM_BIN (one venv) and ORCHESTRATOR_TINY_MODEL.
//! Usage: bench_serve ORCHESTRATOR_BINARY
//!
//! Nothing here waits without a deadline, no blocking call runs on the
//! async runtime's workers, and processes are signalled through the kill
//! system call; whatever is left at the end is killed.

use orchestrator_phases::start::RayNode;
use orchestrator_phases::start::ray_node::group_members;
use orchestrator_phases::supervision::become_subreaper;
use orchestrator_ray_gcs::GcsClient;
use orchestrator_test_support::{
    Sig, http_async, kill_descendants, now_ms, raylet_of, signal, signal_group, wait_child,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

const VLLM_ARGS: &[&str] = &[
    "--max-model-len",
    "256",
    "--dtype",
    "bfloat16",
    "--enforce-eager",
];

fn vllm_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("VLLM_CPU_RAY_TEST_PLATFORM", "1"),
        ("VLLM_CPU_KVCACHE_SPACE", "1"),
        ("HF_HUB_OFFLINE", "1"),
    ]
}

/// Polls until a completion succeeds; returns the wall-clock ms it did.
async fn first_completion(server: &str, limit: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 1}"#;
    while Instant::now() < deadline {
        let reply = http_async(
            server,
            "POST",
            "/v1/completions",
            body,
            Duration::from_secs(60),
        )
        .await;
        if reply.is_some_and(|r| r.status == 200) {
            return Ok(now_ms());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no completion from {server} within {limit:?}"))
}

async fn registered_ms(gcs: &str, nodes: usize) -> Result<u64, String> {
    let client = GcsClient::connect_until(gcs, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let alive: Vec<u64> = client
            .get_all_nodes()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.start_time_ms)
            .collect();
        if alive.len() >= nodes {
            return alive
                .into_iter()
                .max()
                .ok_or_else(|| "no nodes".to_string());
        }
        if Instant::now() > deadline {
            return Err("the nodes never registered".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn death_ms(gcs: &str) -> Option<u64> {
    let gcs = gcs.to_string();
    tokio::task::spawn_blocking(move || orchestrator_test_support::gcs_death_time(&gcs))
        .await
        .ok()
        .flatten()
}

async fn restarts(endpoints: &str) -> Option<u64> {
    let reply = http_async(endpoints, "GET", "/status", "", Duration::from_secs(5)).await?;
    let v: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    v["restarts"].as_u64()
}

async fn server_pid(endpoints: &str) -> Option<i32> {
    let reply = http_async(endpoints, "GET", "/status", "", Duration::from_secs(5)).await?;
    let v: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    v["server-pid"].as_i64().and_then(|p| i32::try_from(p).ok())
}

async fn orchestrator_run(
    bin: &str,
    ray: &str,
    vllm: &str,
    model: &str,
    early: bool,
) -> Result<(f64, f64), String> {
    let (head, port, serve_port, endpoints_port) = ("127.0.0.120", 6520u16, 18520u16, 18521u16);
    let gcs = format!("{head}:{port}");
    let server = format!("{head}:{serve_port}");
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log_path = if early {
        "/tmp/bench-serve-orchestrator-early.log"
    } else {
        "/tmp/bench-serve-orchestrator.log"
    };
    let log = std::fs::File::create(log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "local",
        "--workers",
        "1",
        "--worker-delay",
        // Early launch: the worker comes late enough for vLLM to reach its
        // placement-group wait first.
        if early { "25" } else { "3" },
        "--gpus-per-node",
        "1",
        "--memory-mib",
        "1000",
    ])
    .args([
        "--object-store-mib",
        "200",
        "--tp",
        "2",
        "--head-ip",
        head,
        "--gcs-port",
        &port.to_string(),
    ])
    .args([
        "--agent-port",
        "52520",
        "--metrics-port",
        "28520",
        "--temp-dir",
        "/tmp/ray-b6520",
    ])
    .args([
        "--serve-port",
        &serve_port.to_string(),
        "--endpoints-port",
        &endpoints_port.to_string(),
    ])
    .args([
        "--health-interval-ms",
        "500",
        "--model",
        model,
        "--ray-env",
        "VLLM_CPU_RAY_TEST_PLATFORM=1",
    ]);
    for (k, v) in vllm_env() {
        cmd.arg("--vllm-env").arg(format!("{k}={v}"));
    }
    for a in VLLM_ARGS {
        cmd.arg(format!("--vllm-arg={a}"));
    }
    if early {
        cmd.args(["--launch-param", "early-launch=true"]);
    } else {
        cmd.args(["--launch-param", "early-launch=false"]);
    }
    let mut child = cmd
        .env("ORCHESTRATOR_RAY_BIN", ray)
        .env("ORCHESTRATOR_VLLM_BIN", vllm)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = async {
        let registered = registered_ms(&gcs, 2).await?;
        let served = first_completion(&server, Duration::from_secs(300)).await?;
        println!(
            "orchestrator{}: first completion {:.1} s after the last node registered",
            if early { " with early launch" } else { "" },
            (served - registered) as f64 / 1000.0
        );
        if early {
            // Failure -> serving again by restart: the serving process is
            // killed; the health policy restarts it.
            let pid = server_pid(&endpoints)
                .await
                .ok_or("/status names no server pid")?;
            let killed = now_ms();
            signal(pid, Sig::KILL);
            let again = first_completion(&server, Duration::from_secs(300)).await?;
            let restart_s = (again - killed) as f64 / 1000.0;
            println!("orchestrator: serving again {restart_s:.1} s after the server was killed (restart)");
            return Ok(((served - registered) as f64 / 1000.0, restart_s));
        }
        let before = restarts(&endpoints).await.unwrap_or(0);
        let raylet = raylet_of("127.0.0.121").ok_or("no worker raylet")?;
        signal(raylet, Sig::KILL);
        let deadline = Instant::now() + Duration::from_secs(60);
        let acted = loop {
            if restarts(&endpoints).await.unwrap_or(0) > before {
                break now_ms();
            }
            if Instant::now() > deadline {
                return Err("no action on the worker's death".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut died = None;
        for _ in 0..300 {
            died = death_ms(&gcs).await;
            if died.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let died = died.ok_or("the GCS never marked the worker dead")?;
        let action = acted as f64 - died as f64;
        println!("orchestrator: action {action:.0} ms after the GCS marked the worker dead (negative: vLLM's exit came first)");
        Ok(((served - registered) as f64 / 1000.0, action))
    }
    .await;
    // The orchestrator drains vLLM (up to 30 s) and stops its Ray nodes.
    signal(child.id() as i32, Sig::TERM);
    if wait_child(&mut child, Duration::from_secs(90))
        .await
        .is_none()
    {
        eprintln!("the orchestrator did not exit; killed");
    }
    result
}

async fn old_way_run(ray: &str, vllm: &str, model: &str) -> Result<f64, String> {
    let (head, port, serve_port) = ("127.0.0.125", 6525u16, 18525u16);
    let gcs = format!("{head}:{port}");
    let base = |ip: &str, agent: u16| {
        vec![
            format!("--node-ip-address={ip}"),
            "--num-cpus=1".into(),
            "--num-gpus=1".into(),
            "--memory=1048576000".into(),
            "--object-store-memory=209715200".into(),
            format!("--dashboard-agent-listen-port={agent}"),
            format!("--metrics-export-port={}", agent - 24000),
            "--disable-usage-stats".into(),
        ]
    };
    let ray_env = vec![("VLLM_CPU_RAY_TEST_PLATFORM".to_string(), "1".to_string())];
    let mut head_argv = vec![
        ray.to_string(),
        "start".into(),
        "--head".into(),
        format!("--port={port}"),
        "--temp-dir=/tmp/ray-b6525".into(),
    ];
    head_argv.extend(base(head, 52525));
    let head_node = RayNode::start(
        "old-head",
        &head_argv,
        &ray_env,
        Duration::from_secs(120),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    // The origin document's flow: its loop, corrected so it can end, then vllm serve.
    let mut script = format!(
        "until [ \"$({ray} status --address {gcs} 2>/dev/null | awk '/^Active:/{{f=1;next}} /^(Pending|Recent)/{{f=0}} f && /node_/{{n++}} END{{print n+0}}')\" -ge 2 ]; do echo waiting; sleep 5; done; exec {vllm} serve {model} --host {head} --port {serve_port} --served-model-name tiny --tensor-parallel-size 2 --distributed-executor-backend ray"
    );
    for a in VLLM_ARGS {
        script.push(' ');
        script.push_str(a);
    }
    let log = std::fs::File::create("/tmp/bench-serve-old-way.log").map_err(|e| e.to_string())?;
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(&script)
        .env("RAY_ADDRESS", &gcs)
        .env("VLLM_HOST_IP", head);
    for (k, v) in vllm_env() {
        sh.env(k, v);
    }
    use std::os::unix::process::CommandExt;
    let mut loop_child = sh
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut worker_argv = vec![ray.to_string(), "start".into(), format!("--address={gcs}")];
    worker_argv.extend(base("127.0.0.126", 52526));
    let worker = RayNode::start(
        "old-worker",
        &worker_argv,
        &ray_env,
        Duration::from_secs(120),
        None,
    )
    .await;
    let result = async {
        worker.as_ref().map_err(|e| e.to_string())?;
        let registered = registered_ms(&gcs, 2).await?;
        let served =
            first_completion(&format!("{head}:{serve_port}"), Duration::from_secs(300)).await?;
        let took = (served - registered) as f64 / 1000.0;
        println!("origin flow: first completion {took:.1} s after the last node registered");
        Ok(took)
    }
    .await;
    // The loop and vLLM are one process group (the script's): SIGTERM, up
    // to 35 s for vLLM to drain, then SIGKILL.
    let group = loop_child.id() as i32;
    signal_group(group, Sig::TERM);
    let drained = Instant::now() + Duration::from_secs(35);
    while Instant::now() < drained && !group_members(group).is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal_group(group, Sig::KILL);
    let _ = wait_child(&mut loop_child, Duration::from_secs(10)).await;
    if let Ok(w) = &worker {
        w.stop(Duration::from_secs(5), None).await;
    }
    head_node.stop(Duration::from_secs(5), None).await;
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let bin = std::env::args()
        .nth(1)
        .ok_or("usage: bench_serve ORCHESTRATOR_BINARY")?;
    let (ray, vllm, model) = (
        env("ORCHESTRATOR_RAY_BIN")?,
        env("ORCHESTRATOR_VLLM_BIN")?,
        env("ORCHESTRATOR_TINY_MODEL")?,
    );
    let _ = become_subreaper();
    let orchestrator = orchestrator_run(&bin, &ray, &vllm, &model, false).await;
    let left = kill_descendants();
    if left > 0 {
        eprintln!("{left} processes of the orchestrator's run were left and killed");
    }
    let (orch_s, action_ms) = orchestrator?;
    let old = old_way_run(&ray, &vllm, &model).await;
    let left = kill_descendants();
    if left > 0 {
        eprintln!("{left} processes of the origin flow (vLLM's Ray workers) were left and killed");
    }
    let old_s = old?;
    let early = orchestrator_run(&bin, &ray, &vllm, &model, true).await;
    let left = kill_descendants();
    if left > 0 {
        eprintln!("{left} processes of the early-launch run were left and killed");
    }
    let (early_s, restart_s) = early?;
    // How soon after the ready decision vLLM was started (the
    // orchestrator logs it).
    let log = std::fs::read_to_string("/tmp/bench-serve-orchestrator.log").unwrap_or_default();
    let launch_us = orchestrator_test_support::launch_after_ready_us(&log)
        .ok_or("the orchestrator's log does not say when vLLM was started")?;
    println!("orchestrator: vLLM started {launch_us} us after the ready decision");
    // Recover in place needs vLLM's fault tolerance, which vLLM 0.32
    // offers only in external-LB data-parallel mode, refused for dense
    // models and for one data-parallel rank (README, "Recover in place").
    println!(
        "BENCH serve orchestrator_registration_to_completion_s={orch_s:.1} origin_flow_registration_to_completion_s={old_s:.1} speedup={:.2} early_launch_registration_to_completion_s={early_s:.1} death_to_action_ms={action_ms:.0} launch_after_ready_us={launch_us} early_launch_s={early_s:.1} after_ready_s={orch_s:.1} early_ratio={:.2} restart_to_serving_s={restart_s:.1} recover_to_serving_s=unsupported",
        old_s / orch_s.max(0.001),
        early_s / orch_s.max(0.001)
    );
    Ok(())
}
