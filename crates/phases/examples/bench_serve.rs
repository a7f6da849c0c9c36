//! `cargo xtask bench serve`: on a real local cluster (head + 1 worker,
//! real vLLM tensor-parallel over both), in one run:
//!
//! 1. the orchestrator (`orchestrator local ... --model`): time from the last
//!    node's registration with the GCS to the first successful completion;
//!    then the time from the worker's death (the GCS's end time for it) to
//!    the orchestrator's action (its restart counter moving);
//! 2. the origin document's flow on the same layout: the same nodes, then
//!    its shell loop corrected so it can end (`ray status`, count `Active:`
//!    nodes, `sleep 5`) followed by `vllm serve`: the same first measure.
//!
//! The last line is `BENCH serve ...`. Needs ORCHESTRATOR_RAY_BIN,
//! ORCHESTRATOR_VLLM_BIN (one venv) and ORCHESTRATOR_TINY_MODEL.
//! Usage: bench_serve ORCHESTRATOR_BINARY

use orchestrator_phases::ray_node::{RayNode, become_subreaper};
use orchestrator_ray_gcs::GcsClient;
use orchestrator_ray_gcs::proto::node_info_gcs_service_client::NodeInfoGcsServiceClient;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

fn http(address: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// Polls until a completion succeeds; returns the wall-clock ms it did.
fn first_completion(server: &str, limit: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 1}"#;
    while Instant::now() < deadline {
        if let Some((200, _)) = http(server, "POST", "/v1/completions", body) {
            return Ok(now_ms());
        }
        std::thread::sleep(Duration::from_millis(100));
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
    let mut client = NodeInfoGcsServiceClient::connect(format!("http://{gcs}"))
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
}

fn restarts(endpoints: &str) -> Option<u64> {
    let (_, body) = http(endpoints, "GET", "/status", "")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["restarts"].as_u64()
}

fn raylet_of(ip: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid: i32 = entry.file_name().to_str()?.parse().unwrap_or(0);
        if pid == 0 {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if comm.trim() == "raylet"
            && String::from_utf8_lossy(&cmdline).contains(&format!("--node_ip_address={ip}\0"))
        {
            return Some(pid);
        }
    }
    None
}

async fn orchestrator_run(
    bin: &str,
    ray: &str,
    vllm: &str,
    model: &str,
) -> Result<(f64, f64), String> {
    let (head, port, serve_port, endpoints_port) = ("127.0.0.120", 6520u16, 18520u16, 18521u16);
    let gcs = format!("{head}:{port}");
    let server = format!("{head}:{serve_port}");
    let endpoints = format!("127.0.0.1:{endpoints_port}");
    let log =
        std::fs::File::create("/tmp/bench-serve-orchestrator.log").map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "local",
        "--workers",
        "1",
        "--worker-delay",
        "3",
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
    let mut child = cmd
        .env("ORCHESTRATOR_RAY_BIN", ray)
        .env("ORCHESTRATOR_VLLM_BIN", vllm)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = async {
        let registered = registered_ms(&gcs, 2).await?;
        let served = first_completion(&server, Duration::from_secs(300))?;
        println!("orchestrator: first completion {:.1} s after the last node registered", (served - registered) as f64 / 1000.0);
        let before = restarts(&endpoints).unwrap_or(0);
        let raylet = raylet_of("127.0.0.121").ok_or("no worker raylet")?;
        if let Some(pid) = rustix::process::Pid::from_raw(raylet) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let acted = loop {
            if restarts(&endpoints).unwrap_or(0) > before {
                break now_ms();
            }
            if Instant::now() > deadline {
                return Err("no action on the worker's death".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
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
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
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
    let head_node = RayNode::start("old-head", &head_argv, &ray_env, Duration::from_secs(120))
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
    )
    .await;
    let result = async {
        worker.as_ref().map_err(|e| e.to_string())?;
        let registered = registered_ms(&gcs, 2).await?;
        let served = first_completion(&format!("{head}:{serve_port}"), Duration::from_secs(300))?;
        let took = (served - registered) as f64 / 1000.0;
        println!("origin flow: first completion {took:.1} s after the last node registered");
        Ok(took)
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &format!("-{}", loop_child.id())])
        .status();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = Command::new("kill")
        .args(["-KILL", &format!("-{}", loop_child.id())])
        .status();
    let _ = loop_child.wait();
    if let Ok(w) = &worker {
        w.stop(Duration::from_secs(5)).await;
    }
    head_node.stop(Duration::from_secs(5)).await;
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
    let (orch_s, action_ms) = orchestrator_run(&bin, &ray, &vllm, &model).await?;
    let old_s = old_way_run(&ray, &vllm, &model).await?;
    println!(
        "BENCH serve orchestrator_registration_to_completion_s={orch_s:.1} origin_flow_registration_to_completion_s={old_s:.1} speedup={:.2} death_to_action_ms={action_ms:.0}",
        old_s / orch_s.max(0.001)
    );
    Ok(())
}
