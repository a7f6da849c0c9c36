//! `cargo xtask bench wait`: on a real local Ray cluster, in one run and
//! several rounds, how long after the last worker registers with the GCS
//! (a) `orchestrator wait` prints its ready line (the decision) and exits
//! 0 and (b) the origin document's loop,
//! corrected so it can end (`ray status --address`, count the nodes under
//! `Active:`, `sleep 5`), ends — side by side on the same cluster. Then the
//! CPU-seconds each spends in a wait that never completes. A second
//! cluster with Ray's token authentication on (`RAY_AUTH_MODE=token`) runs
//! beside it, and `orchestrator wait` is measured on both in the same
//! rounds (`token_*` figures). The last line is `BENCH wait ...`.
//!
//! Usage: bench_wait ORCHESTRATOR_BINARY (with ORCHESTRATOR_RAY_BIN set).
//! BENCH_ROUNDS (default 5) and BENCH_CPU_SECONDS (default 60) tune it.

use orchestrator_phases::start::RayNode;
use orchestrator_phases::supervision::become_subreaper;
use orchestrator_ray_gcs::GcsClient;
use orchestrator_test_support::{kill_descendants, now_ms};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HEAD: &str = "127.0.0.90";
const PORT: u16 = 6490;
/// The cluster with token authentication.
const TOKEN_PORT: u16 = 6491;
const TOKEN: &str = "benchwaittoken0123456789abcdef01";

/// One cluster of the bench: its head's address and whether it uses a
/// token.
#[derive(Clone, Copy)]
struct Cluster {
    base: u8,
    port: u16,
    token: bool,
}

const PLAIN: Cluster = Cluster {
    base: 90,
    port: PORT,
    token: false,
};
const WITH_TOKEN: Cluster = Cluster {
    base: 110,
    port: TOKEN_PORT,
    token: true,
};

impl Cluster {
    fn head(&self) -> String {
        format!("127.0.0.{}:{}", self.base, self.port)
    }

    /// The environment of its nodes and of every client.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("RAY_USAGE_STATS_ENABLED".into(), "0".into())];
        if self.token {
            env.push(("RAY_AUTH_MODE".into(), "token".into()));
            env.push(("RAY_AUTH_TOKEN".into(), TOKEN.into()));
        }
        env
    }

    fn node_argv(&self, ray: &str, index: u8) -> Vec<String> {
        let mut a = vec![ray.to_string(), "start".to_string()];
        if index == 0 {
            a.extend([
                "--head".into(),
                format!("--port={}", self.port),
                format!("--temp-dir=/tmp/ray-bench-wait-{}", self.base),
            ]);
        } else {
            a.push(format!("--address={}", self.head()));
        }
        let ports = 100 * u16::from(self.base);
        a.extend([
            format!("--node-ip-address=127.0.0.{}", self.base + index),
            "--num-cpus=1".into(),
            "--memory=500000000".into(),
            "--object-store-memory=80000000".into(),
            format!(
                "--dashboard-agent-listen-port={}",
                40000 + ports % 20000 + u16::from(index)
            ),
            format!(
                "--metrics-export-port={}",
                20000 + ports % 20000 + u16::from(index)
            ),
            "--disable-usage-stats".into(),
        ]);
        a
    }

    /// `orchestrator wait` for `nodes` nodes of this cluster.
    fn wait(&self, orchestrator: &str, nodes: u32, timeout: u64) -> Command {
        let mut wait = Command::new(orchestrator);
        wait.args([
            "wait",
            "--address",
            &self.head(),
            "--nodes",
            &nodes.to_string(),
        ])
        .args(["--timeout", &timeout.to_string()])
        .env_remove("RAY_AUTH_MODE")
        .env_remove("RAY_AUTH_TOKEN");
        for (k, v) in self.env() {
            wait.env(k, v);
        }
        wait
    }
}

/// The corrected loop of the origin document: it can end.
fn loop_script(ray: &str, nodes: u32) -> String {
    format!(
        "until [ \"$({ray} status --address {HEAD}:{PORT} 2>/dev/null | awk '/^Active:/{{f=1;next}} /^(Pending|Recent)/{{f=0}} f && /node_/{{n++}} END{{print n+0}}')\" -ge {nodes} ]; do sleep 5; done"
    )
}

/// When a timed command answered: the wall-clock ms at which its `ready`
/// line arrived on its stdout (the decision; `None` for a command that
/// prints none), and at which it exited.
struct Timed {
    ready_ms: Option<u64>,
    exit_ms: u64,
    ok: bool,
}

/// Spawns `cmd` and reports when it printed `ready` and when it exited.
fn spawn_timed(mut cmd: Command) -> Result<mpsc::Receiver<Timed>, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot spawn: {e}"))?;
    let stdout = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut ready_ms = None;
        if let Some(out) = stdout {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if ready_ms.is_none() && line.starts_with("ready") {
                    ready_ms = Some(now_ms());
                }
            }
        }
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        let _ = tx.send(Timed {
            ready_ms,
            exit_ms: now_ms(),
            ok,
        });
    });
    Ok(rx)
}

/// CPU-seconds of a shell `command` and every process it waited for (the
/// loop's `ray status` calls), measured by a wrapping shell that prints its
/// children's times from /proc when done (clock ticks: 10 ms resolution).
fn cpu_seconds_of(command: &str, seconds: u64) -> Result<f64, String> {
    let script = format!(
        "timeout {seconds} sh -c '{}'; cat /proc/$$/stat",
        command.replace('\'', "'\\''")
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stat = String::from_utf8_lossy(&out.stdout);
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("no /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3 of stat; cutime and cstime are 16 and 17.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = 100.0;
    Ok((ticks(16) + ticks(17)) / hz)
}

/// CPU-seconds of a direct child over its whole life: its schedstat,
/// sampled every 100 ms until it exits (killed at `limit`).
fn cpu_seconds_of_child(mut child: std::process::Child, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    let mut last = 0.0;
    loop {
        if let Some(s) = orchestrator_test_support::cpu_seconds_of(child.id()) {
            last = s;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return last;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let orchestrator = std::env::args()
        .nth(1)
        .ok_or("usage: bench_wait ORCHESTRATOR_BINARY")?;
    let ray = std::env::var("ORCHESTRATOR_RAY_BIN")
        .map_err(|_| "set ORCHESTRATOR_RAY_BIN to Ray's `ray`")?;
    let rounds: u8 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let cpu_window: u64 = std::env::var("BENCH_CPU_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let _ = become_subreaper();

    let head = RayNode::start(
        "head",
        &PLAIN.node_argv(&ray, 0),
        &PLAIN.env(),
        Duration::from_secs(120),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let token_head = RayNode::start(
        "token-head",
        &WITH_TOKEN.node_argv(&ray, 0),
        &WITH_TOKEN.env(),
        Duration::from_secs(120),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let gcs = GcsClient::connect_until(&format!("{HEAD}:{PORT}"), Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let token_auth =
        orchestrator_ray_gcs::RayAuth::token(TOKEN, "bench").map_err(|e| e.to_string())?;
    let token_gcs =
        GcsClient::connect_with(&WITH_TOKEN.head(), Duration::from_secs(30), token_auth)
            .await
            .map_err(|e| e.to_string())?;
    // `ray status` has nothing to say for a few seconds after the head starts.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut orch_ms = Vec::new();
    let mut loop_ms = Vec::new();
    let mut token_ms = Vec::new();
    let mut ready_ms = Vec::new();
    // Workers stay up: round r waits for r + 1 nodes (a stopped worker would
    // linger in `ray status` for seconds and end the loop falsely).
    let mut workers = Vec::new();
    let result: Result<(), String> = async {
        for round in 1..=rounds {
            let want = u32::from(round) + 1;
            let orch = spawn_timed(PLAIN.wait(&orchestrator, want, 120))?;
            let token_orch = spawn_timed(WITH_TOKEN.wait(&orchestrator, want, 120))?;
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(loop_script(&ray, want));
            let shell = spawn_timed(sh)?;
            // Vary where in the loop's 5 s sleep the worker lands.
            tokio::time::sleep(Duration::from_millis(1500 + 1100 * u64::from(round))).await;
            // One cluster's worker at a time: a second `ray start` beside
            // the first would take the two cores from the decision timed.
            let worker = RayNode::start(&format!("worker-{round}"), &PLAIN.node_argv(&ray, round), &PLAIN.env(), Duration::from_secs(120), None)
                .await
                .map_err(|e| e.to_string())?;
            let orch = orch.recv_timeout(Duration::from_secs(60)).map_err(|_| "orchestrator wait hung")?;
            workers.push(worker);
            let token_worker = RayNode::start(&format!("token-worker-{round}"), &WITH_TOKEN.node_argv(&ray, round), &WITH_TOKEN.env(), Duration::from_secs(120), None)
                .await
                .map_err(|e| e.to_string())?;
            let token = token_orch.recv_timeout(Duration::from_secs(60)).map_err(|_| "orchestrator wait (token) hung")?;
            workers.push(token_worker);
            let token_ip = format!("127.0.0.{}", WITH_TOKEN.base + round);
            let token_registered = token_gcs
                .get_all_nodes()
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .find(|n| n.alive && n.address == token_ip)
                .map(|n| n.start_time_ms)
                .ok_or("the token cluster's worker is not in its GCS")?;
            let t = token.exit_ms.saturating_sub(token_registered) as f64;
            println!("round {round}: with Ray's token auth, `orchestrator wait` exited in {t:>6.0} ms (ok={})", token.ok);
            if !token.ok {
                return Err("orchestrator wait failed on the token cluster".to_string());
            }
            token_ms.push(t);
            let ip = format!("127.0.0.{}", 90 + round);
            let looped = shell.recv_timeout(Duration::from_secs(60)).map_err(|_| "the loop hung")?;
            let nodes = gcs.get_all_nodes().await.map_err(|e| e.to_string())?;
            let registered = nodes
                .iter()
                .find(|n| n.alive && n.address == ip)
                .map(|n| n.start_time_ms)
                .ok_or("the worker is not in the GCS")?;
            let o = orch.exit_ms.saturating_sub(registered) as f64;
            let r = orch
                .ready_ms
                .ok_or("orchestrator wait printed no ready line")?
                .saturating_sub(registered) as f64;
            let l = looped.exit_ms.saturating_sub(registered) as f64;
            println!(
                "round {round}: after the worker registered, `orchestrator wait` said ready in {r:>6.0} ms and exited in {o:>6.0} ms (ok={}), the loop in {l:>6.0} ms (ok={})",
                orch.ok, looped.ok
            );
            orch_ms.push(o);
            ready_ms.push(r);
            loop_ms.push(l);
        }
        Ok(())
    }
    .await;
    for worker in workers.iter().rev() {
        worker.stop(Duration::from_secs(5), None).await;
    }
    if let Err(e) = result {
        head.stop(Duration::from_secs(5), None).await;
        token_head.stop(Duration::from_secs(5), None).await;
        kill_descendants();
        return Err(e);
    }

    println!("CPU while waiting {cpu_window} s for a node that never comes (both at once):");
    let loop_cmd = loop_script(&ray, 99);
    let window = cpu_window + 2;
    let token_child = WITH_TOKEN
        .wait(&orchestrator, 99, cpu_window)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let orch_child = PLAIN
        .wait(&orchestrator, 99, cpu_window)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(cpu_window + 30);
    let orch_cpu = tokio::task::spawn_blocking(move || {
        Ok::<f64, String>(cpu_seconds_of_child(orch_child, limit))
    });
    let token_cpu = tokio::task::spawn_blocking(move || cpu_seconds_of_child(token_child, limit));
    let loop_cpu = tokio::task::spawn_blocking(move || cpu_seconds_of(&loop_cmd, window));
    let orch_cpu = orch_cpu.await.map_err(|e| e.to_string())??;
    let token_cpu = token_cpu.await.map_err(|e| e.to_string())?;
    let loop_cpu = loop_cpu.await.map_err(|e| e.to_string())??;
    head.stop(Duration::from_secs(5), None).await;
    token_head.stop(Duration::from_secs(5), None).await;
    let left = kill_descendants();
    if left > 0 {
        eprintln!("{left} processes were left and killed");
    }

    let o50 = percentile(&orch_ms, 0.5);
    let l50 = percentile(&loop_ms, 0.5);
    println!(
        "detection after registration: orchestrator p50 {o50:.0} ms (max {:.0}), loop p50 {l50:.0} ms (max {:.0})",
        percentile(&orch_ms, 1.0),
        percentile(&loop_ms, 1.0)
    );
    let r50 = percentile(&ready_ms, 0.5);
    println!(
        "decision (its ready line) after registration: p50 {r50:.0} ms (max {:.0})",
        percentile(&ready_ms, 1.0)
    );
    let t50 = percentile(&token_ms, 0.5);
    println!(
        "with Ray's token auth: orchestrator p50 {t50:.0} ms (max {:.0}), {:+.0} ms against no auth",
        percentile(&token_ms, 1.0),
        t50 - o50
    );
    println!(
        "CPU in {cpu_window} s: orchestrator {orch_cpu:.4} s (with token auth {token_cpu:.4} s), loop {loop_cpu:.2} s"
    );
    println!(
        "BENCH wait orchestrator_p50_ms={o50:.0} loop_p50_ms={l50:.0} speedup={:.0} orchestrator_max_ms={:.0} loop_max_ms={:.0} orchestrator_cpu_s={orch_cpu:.4} loop_cpu_s={loop_cpu:.2} cpu_ratio={:.0} token_p50_ms={t50:.0} token_extra_ms={:.0} token_cpu_s={token_cpu:.4} ready_p50_ms={r50:.0} rounds={rounds}",
        l50 / o50.max(1.0),
        percentile(&orch_ms, 1.0),
        percentile(&loop_ms, 1.0),
        loop_cpu / orch_cpu.max(0.0001),
        t50 - o50
    );
    Ok(())
}
