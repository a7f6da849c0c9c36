//! `cargo xtask soak --minutes N`: a long chaos run. A local cluster of
//! three "pods" (a head and two workers, each its own `orchestrator run` as
//! PID 1 of its own PID namespace, so that its death takes the pod's
//! processes with it, restarted like a kubelet would when it exits) serves
//! real vLLM tensor parallel over two of the three nodes, with GCS fault
//! tolerance through a real `redis-server`. Worker 2 lives in a network
//! namespace of its own, joined to the others by a veth pair the soak
//! makes ([`Network`]). A client asks for a completion every second; 20-60
//! s after serving has come back from the previous fault, one random fault
//! is injected: SIGKILL a raylet, the GCS, vLLM or a worker's orchestrator;
//! SIGSTOP a raylet for 30 s; cut worker 2's link for 30 s. Checked
//! throughout: a completion that fails while `/readyz` said 200 all along
//! (false ready); serving again within the bound after each fault;
//! orchestrators' zombies; their RSS and open fds; and at the end, nothing
//! left running. Ends with one line `BENCH soak ...`. Entry point:
//! [`soak`].

use anyhow::{Context, Result, bail};
use orchestrator_test_support::{Sig, free_port, http, signal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "soak-redis-password";
/// How long serving may take to come back after a fault (a head restart
/// recovers the cluster and starts vLLM again: about 70 s here).
const RECOVERY_BOUND: Duration = Duration::from_secs(300);
/// How long a SIGSTOP or a cut link lasts.
const OUTAGE: Duration = Duration::from_secs(30);

/// The soak's network: worker 2's namespace and the veth pair joining it
/// to the host. The head (`.1`) and worker 1 (`.3`) use addresses on the
/// host's end, worker 2 (`.2`) the namespace's end, all in 198.18.0.0/15
/// (set aside for benchmarks, routed nowhere). A cut sets the namespace's
/// end down: the host's addresses stay local and usable, worker 2's
/// packets go nowhere (a connection attempt times out, as across a broken
/// network). Dropping it deletes the namespace and with it the pair.
struct Network {
    ns: String,
    /// The host's end of the pair.
    outer: String,
    /// The namespace's end.
    inner: String,
    subnet: String,
}

impl Network {
    fn create(tag: u16) -> Result<Self> {
        let net = Self {
            ns: format!("soak{tag}"),
            outer: format!("sk{tag}h"),
            inner: format!("sk{tag}n"),
            subnet: format!("198.18.{}", tag % 250 + 1),
        };
        let outer = net.outer.clone();
        let _ = ip(&["netns", "del", &net.ns]);
        let (head, worker1, worker2) = (
            format!("{}/24", net.address(1)),
            format!("{}/24", net.address(3)),
            format!("{}/24", net.address(2)),
        );
        let steps: [&[&str]; 8] = [
            &["netns", "add", &net.ns],
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &net.inner, "netns", &net.ns,
            ],
            &["addr", "add", &head, "dev", &outer],
            &["addr", "add", &worker1, "dev", &outer],
            &["link", "set", &outer, "up"],
            &["-n", &net.ns, "addr", "add", &worker2, "dev", &net.inner],
            &["-n", &net.ns, "link", "set", &net.inner, "up"],
            &["-n", &net.ns, "link", "set", "lo", "up"],
        ];
        for args in steps {
            ip(args).with_context(|| {
                format!(
                    "cannot make the soak's network (ip {}); it needs root",
                    args.join(" ")
                )
            })?;
        }
        Ok(net)
    }

    /// `198.18.N.host`.
    fn address(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet)
    }

    /// Sets worker 2's end of the link up or down.
    fn set_link(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns, "link", "set", &self.inner, state])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One process a kubelet would keep running.
struct Pod {
    name: String,
    config: PathBuf,
    log: PathBuf,
    /// The network namespace it runs in (None: the host's).
    netns: Option<String>,
    /// `unshare`, whose one child is the pod's orchestrator.
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    /// (seconds since its start, RSS KiB, open fds) samples of this life.
    samples: Vec<(f64, u64, u64)>,
    /// Growth over each finished life that lasted long enough.
    growth: Vec<(f64, i64, i64)>,
}

impl Pod {
    fn start(&mut self, bin: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        // The pod dies with the soak (SIGKILL to `unshare` when the soak
        // exits, however it exits), and its namespace's processes with it.
        let child = command
            .args(["--pdeathsig", "KILL", "unshare"])
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("REDIS_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.started = Instant::now();
        self.samples.clear();
        Ok(())
    }

    /// The orchestrator's pid (on the host): PID 1 of the pod's namespace.
    fn pid(&self) -> Option<i32> {
        let unshare = self.child.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Ends this life's sampling: the growth from the first sample after
    /// a minute of warm-up to the last.
    fn close_life(&mut self) {
        let warm = self.samples.iter().find(|s| s.0 >= 60.0);
        if let (Some(first), Some(last)) = (warm, self.samples.last())
            && last.0 - first.0 >= 60.0
        {
            self.growth.push((
                last.0 - first.0,
                last.1 as i64 - first.1 as i64,
                last.2 as i64 - first.2 as i64,
            ));
        }
        self.samples.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillRaylet(usize),
    KillGcs,
    KillVllm,
    KillWorkerOrchestrator(usize),
    StopRaylet(usize),
    CutNetwork,
}

impl Fault {
    /// How long the fault itself lasts after its injection.
    fn lasts(self) -> Duration {
        match self {
            Self::StopRaylet(_) | Self::CutNetwork => OUTAGE,
            _ => Duration::ZERO,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KillRaylet(w) => write!(f, "SIGKILL worker {}'s raylet", w + 1),
            Self::KillGcs => write!(f, "SIGKILL the GCS"),
            Self::KillVllm => write!(f, "SIGKILL vLLM"),
            Self::KillWorkerOrchestrator(w) => write!(f, "SIGKILL worker {}'s orchestrator", w + 1),
            Self::StopRaylet(w) => write!(f, "SIGSTOP worker {}'s raylet for 30 s", w + 1),
            Self::CutNetwork => write!(f, "cut worker 2's link for 30 s"),
        }
    }
}

/// Each completion: when it began, when it ended, whether it succeeded.
type Completions = Arc<Mutex<Vec<(Instant, Instant, bool)>>>;

/// xorshift64*: a seeded, reproducible choice of faults and gaps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every process as (pid, ppid, state, comm, cmdline).
fn processes() -> Vec<(i32, i32, char, String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat.get(open + 1..close)?.to_string();
            let mut rest = stat.get(close + 1..)?.split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            Some((pid, ppid, state, comm, cmdline))
        })
        .collect()
}

fn find(pred: impl Fn(&str, &str) -> bool) -> Option<i32> {
    processes()
        .into_iter()
        .find(|p| p.2 != 'Z' && pred(&p.3, &p.4))
        .map(|p| p.0)
}

fn rss_kib_and_fds(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// One completion of the tiny model; true when it succeeded.
fn complete(server: &str) -> bool {
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}"#;
    http(
        server,
        "POST",
        "/v1/completions",
        body,
        Duration::from_secs(30),
    )
    .is_some_and(|r| r.status == 200 && r.body.contains("choices"))
}

fn readyz(endpoints: &str) -> u16 {
    http(endpoints, "GET", "/readyz", "", Duration::from_secs(2)).map_or(0, |r| r.status)
}

/// The soak. `bin` is the orchestrator, `venv` the vLLM venv (its `ray`
/// and `vllm`), `model` the tiny model, `redis` the `redis-server`.
/// Logs and configurations go to `logs` (kept).
pub fn soak(
    bin: &Path,
    venv: &Path,
    model: &Path,
    redis: &Path,
    minutes: f64,
    logs: &Path,
) -> Result<()> {
    let run_for = Duration::from_secs_f64((minutes * 60.0).max(60.0));
    let (gcs, redis_port, serve, head_endpoints) =
        (free_port(), free_port(), free_port(), free_port());
    let dir = logs.join(format!("soak-{gcs}"));
    std::fs::create_dir_all(&dir)?;
    let network = Network::create(gcs)?;
    let head_ip = network.address(1);
    let worker_ips = [network.address(3), network.address(2)];
    let temp = format!("/tmp/ray-soak{gcs}");
    let ray = venv.join("bin/ray");
    let vllm = venv.join("bin/vllm");
    // torch's gloo (vLLM's CPU collectives) binds where the host name
    // resolves, loopback here, unless told the interface: each node names
    // its own end of the soak's network.
    let ray_env = |interface: &str| {
        format!(
            r#"env = {{ RAY_USAGE_STATS_ENABLED = "0", VLLM_CPU_RAY_TEST_PLATFORM = "1", GLOO_SOCKET_IFNAME = "{interface}", RAY_health_check_initial_delay_ms = "1000", RAY_health_check_period_ms = "1000", RAY_health_check_timeout_ms = "1000", RAY_health_check_failure_threshold = "5" }}"#
        )
    };
    let node = |ip: &str, endpoints: u16, interface: &str| {
        format!(
            "endpoints-port = {endpoints}\n[ray]\nbin = \"{}\"\nnode-ip = \"{ip}\"\nnum-cpus = 1\nnum-gpus = 1\nmemory = 1048576000\nobject-store-memory = 209715200\ndashboard-agent-listen-port = {}\nmetrics-export-port = {}\nstop-grace-seconds = 5\n{}\n",
            ray.display(),
            free_port(),
            free_port(),
            ray_env(interface)
        )
    };
    let head = format!(
        "role = \"head\"\n{}gcs-port = {gcs}\ntemp-dir = \"{temp}\"\n[ray.gcs-fault-tolerance]\nredis-address = \"{head_ip}:{redis_port}\"\nredis-password-env = \"REDIS_PASSWORD\"\nexternal-storage-namespace = \"soak\"\n[cluster]\nnodes = 3\nwait-timeout-seconds = 600\n[serve]\nmodel = \"{}\"\nserved-model-name = \"tiny\"\nhost = \"{head_ip}\"\nport = {serve}\ntensor-parallel-size = 2\npipeline-parallel-size = 1\nextra-args = [\"--max-model-len\", \"256\", \"--dtype\", \"bfloat16\", \"--enforce-eager\"]\nhealth-interval-ms = 500\ngeneration-interval-ms = 5000\n[policies.launch]\nbuiltin = \"vllm\"\nparams = {{ program = \"{}\", \"env.VLLM_HOST_IP\" = \"{head_ip}\", \"env.VLLM_CPU_RAY_TEST_PLATFORM\" = \"1\", \"env.VLLM_CPU_KVCACHE_SPACE\" = \"1\", \"env.HF_HUB_OFFLINE\" = \"1\", \"env.GLOO_SOCKET_IFNAME\" = \"{}\" }}\n[policies.health]\nbuiltin = \"default\"\nparams = {{ backoff-ms = \"200\", max-restarts = \"1000\" }}\n",
        node(&head_ip, head_endpoints, &network.outer),
        model.display(),
        vllm.display(),
        network.outer
    );
    let mut pods = vec![];
    let mut add = |name: &str, text: String, netns: Option<String>| -> Result<()> {
        let config = dir.as_path().join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        pods.push(Pod {
            name: name.to_string(),
            config,
            log: dir.as_path().join(format!("{name}.log")),
            netns,
            child: None,
            started: Instant::now(),
            restarts: 0,
            samples: vec![],
            growth: vec![],
        });
        Ok(())
    };
    add("head", head, None)?;
    for (i, ip) in worker_ips.iter().enumerate() {
        let interface = if i == 1 {
            &network.inner
        } else {
            &network.outer
        };
        let text = format!(
            "role = \"worker\"\n{}[ray.gcs-fault-tolerance]\nreconnect-timeout-seconds = 600\n",
            node(ip, free_port(), interface).replacen(
                "[ray]\n",
                &format!("[ray]\ngcs-address = \"{head_ip}:{gcs}\"\n"),
                1
            )
        );
        let netns = (i == 1).then(|| network.ns.clone());
        add(&format!("worker-{}", i + 1), text, netns)?;
    }

    let mut redis = Command::new("setpriv")
        .args(["--pdeathsig", "KILL"])
        .arg(redis)
        .args(["--bind", &head_ip, "--port", &redis_port.to_string()])
        .args([
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.as_path())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    for pod in &mut pods {
        pod.start(bin)?;
    }
    let server = format!("{head_ip}:{serve}");
    let endpoints = format!("127.0.0.1:{head_endpoints}");
    eprintln!(
        "soak: head + 2 workers (worker 2 in network namespace {}), vLLM TP 2, a fault 20-60 s after each recovery for {minutes} min; logs in {}",
        network.ns,
        dir.as_path().display()
    );
    let first = Instant::now();
    while !complete(&server) {
        if first.elapsed() > Duration::from_secs(600) {
            stop_pods(&mut pods);
            let _ = redis.kill();
            bail!(
                "the cluster did not serve within 600 s; see {}",
                dir.as_path().display()
            );
        }
        supervise(&mut pods, bin)?;
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("soak: serving after {:.0} s", first.elapsed().as_secs_f64());

    // The client and the /readyz sampler, on their own threads.
    let completions: Completions = Arc::default();
    let readys: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (completions, stop, server) = (completions.clone(), stop.clone(), server.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let began = Instant::now();
                let ok = complete(&server);
                if let Ok(mut c) = completions.lock() {
                    c.push((began, Instant::now(), ok));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let sampler = {
        let (readys, stop, endpoints) = (readys.clone(), stop.clone(), endpoints.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let code = readyz(&endpoints);
                if let Ok(mut r) = readys.lock() {
                    r.push((Instant::now(), code));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    let mut rng = Rng(std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_d00d));
    let start = Instant::now();
    // The next fault comes 20-60 s after serving is back from the last one
    // (and after the last one ended), so that each recovery is measured
    // on its own; a fault that did not recover within the bound is
    // followed by the next one anyway.
    let mut next_fault = Some(start + Duration::from_secs(20 + rng.below(41)));
    let mut faults: Vec<(Instant, Fault)> = vec![];
    let mut zombies_seen: std::collections::BTreeMap<i32, u32> = Default::default();
    let mut last_sample = Instant::now();
    while start.elapsed() < run_for {
        supervise(&mut pods, bin)?;
        if last_sample.elapsed() >= Duration::from_secs(5) {
            last_sample = Instant::now();
            let ours: Vec<i32> = pods.iter().filter_map(Pod::pid).collect();
            for p in processes() {
                if p.2 == 'Z' && ours.contains(&p.1) {
                    *zombies_seen.entry(p.0).or_default() += 1;
                }
            }
            for pod in &mut pods {
                if let Some((rss, fds)) = pod.pid().and_then(rss_kib_and_fds) {
                    let age = pod.started.elapsed().as_secs_f64();
                    pod.samples.push((age, rss, fds));
                }
            }
        }
        if next_fault.is_none()
            && let Some((at, fault)) = faults.last()
        {
            let over = *at + fault.lasts();
            let back = succeeded_after(&completions, *at) || at.elapsed() >= RECOVERY_BOUND;
            if back && Instant::now() >= over {
                next_fault = Some(Instant::now() + Duration::from_secs(20 + rng.below(41)));
            }
        }
        if next_fault.is_some_and(|t| Instant::now() >= t) {
            let fault = match rng.below(6) {
                0 => Fault::KillRaylet(rng.below(2) as usize),
                1 => Fault::KillGcs,
                2 => Fault::KillVllm,
                3 => Fault::KillWorkerOrchestrator(rng.below(2) as usize),
                4 => Fault::StopRaylet(rng.below(2) as usize),
                _ => Fault::CutNetwork,
            };
            let done = inject(fault, &pods, &network, &worker_ips, gcs, serve);
            eprintln!(
                "soak: {:>5.0} s  fault {}: {fault}{}",
                start.elapsed().as_secs_f64(),
                faults.len() + 1,
                if done {
                    ""
                } else {
                    " (its target was not running: skipped)"
                }
            );
            if done {
                faults.push((Instant::now(), fault));
                next_fault = None;
            } else {
                next_fault = Some(Instant::now() + Duration::from_secs(20 + rng.below(41)));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the last fault recover (up to the bound) before judging.
    let last_fault = faults.last().map(|f| f.0);
    if let Some(at) = last_fault {
        while at.elapsed() < RECOVERY_BOUND && !succeeded_after(&completions, at) {
            supervise(&mut pods, bin)?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.join();
    let _ = sampler.join();

    // Judge.
    let completions = completions.lock().map(|c| c.clone()).unwrap_or_default();
    let readys = readys.lock().map(|r| r.clone()).unwrap_or_default();
    let mut recovered = 0;
    let mut recovery_s: Vec<f64> = vec![];
    for (i, (at, fault)) in faults.iter().enumerate() {
        let back = completions
            .iter()
            .find(|c| c.0 > *at && c.2)
            .map(|c| c.1.duration_since(*at));
        match back {
            Some(d) if d <= RECOVERY_BOUND => {
                recovered += 1;
                recovery_s.push(d.as_secs_f64());
                eprintln!(
                    "soak: fault {} ({fault}): serving after {:.1} s",
                    i + 1,
                    d.as_secs_f64()
                );
            }
            _ => eprintln!(
                "soak: fault {} ({fault}): NOT serving again within {} s",
                i + 1,
                RECOVERY_BOUND.as_secs()
            ),
        }
    }
    // A failed completion during which every /readyz sample said 200
    // (from 1 s before it to 3 s after: the health loop's reaction).
    let false_ready = completions
        .iter()
        .filter(|(began, ended, ok)| {
            let window: Vec<u16> = readys
                .iter()
                .filter(|(t, _)| {
                    *t + Duration::from_secs(1) >= *began && *t <= *ended + Duration::from_secs(3)
                })
                .map(|(_, c)| *c)
                .collect();
            !ok && !window.is_empty() && window.iter().all(|c| *c == 200)
        })
        .count();
    let failed = completions.iter().filter(|c| !c.2).count();
    let zombies = zombies_seen.values().filter(|n| **n >= 2).count();

    // Stop every pod as Kubernetes would (SIGTERM), then look for leftovers.
    stop_pods(&mut pods);
    let _ = redis.kill();
    let _ = redis.wait();
    std::thread::sleep(Duration::from_secs(2));
    let left: Vec<(i32, String)> = processes()
        .into_iter()
        .filter(|p| p.2 != 'Z')
        .filter(|p| {
            p.4.contains(&temp)
                || p.4.contains(&head_ip)
                || worker_ips.iter().any(|ip| p.4.contains(ip.as_str()))
        })
        .map(|p| (p.0, p.4.chars().take(120).collect()))
        .collect();
    for (pid, _) in &left {
        signal(*pid, Sig::KILL);
    }
    let growth: Vec<&(f64, i64, i64)> = pods.iter().flat_map(|p| p.growth.iter()).collect();
    let rss_growth_mb = growth.iter().map(|g| g.1).max().unwrap_or(0) as f64 / 1024.0;
    let fd_growth = growth.iter().map(|g| g.2).max().unwrap_or(0);
    recovery_s.sort_by(f64::total_cmp);
    let recovery_p50_s = recovery_s.get(recovery_s.len() / 2).copied().unwrap_or(0.0);
    let recovery_max_s = recovery_s.last().copied().unwrap_or(0.0);
    let restarts: Vec<String> = pods
        .iter()
        .map(|p| format!("{}={}", p.name, p.restarts))
        .collect();
    eprintln!(
        "soak: {} completions, {failed} failed; pod restarts {}; growth measured over {} orchestrator lives of >= 1 min; left: {left:?}",
        completions.len(),
        restarts.join(" "),
        growth.len()
    );
    println!(
        "BENCH soak minutes={minutes} faults={} recovered={recovered} false_ready={false_ready} orphans={} zombies={zombies} rss_growth_mb={rss_growth_mb:.1} fd_growth={fd_growth} recovery_p50_s={recovery_p50_s:.1} recovery_max_s={recovery_max_s:.1}",
        faults.len(),
        left.len()
    );
    if recovered < faults.len() || false_ready > 0 || !left.is_empty() {
        bail!(
            "the soak found a broken invariant (see above); logs were in {}",
            dir.as_path().display()
        );
    }
    Ok(())
}

fn succeeded_after(completions: &Completions, at: Instant) -> bool {
    completions
        .lock()
        .map(|c| c.iter().any(|c| c.0 > at && c.2))
        .unwrap_or(false)
}

/// SIGTERM to every pod's orchestrator, as Kubernetes stops a pod; after
/// 90 s SIGKILL to `unshare`, whose child (the orchestrator, PID 1 of the
/// pod) then dies, and with it everything in its namespace.
fn stop_pods(pods: &mut [Pod]) {
    for pod in pods.iter_mut() {
        pod.close_life();
        if let Some(pid) = pod.pid() {
            signal(pid, Sig::TERM);
        }
    }
    for pod in pods.iter_mut() {
        if let Some(child) = pod.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(90);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Restarts pods whose orchestrator exited, as a kubelet with
/// `restartPolicy: Always` would (after 1 s).
fn supervise(pods: &mut [Pod], bin: &Path) -> Result<()> {
    for pod in pods.iter_mut() {
        let exited = match pod.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => continue,
        };
        if let Some(status) = exited {
            eprintln!(
                "soak: {} exited ({status}) after {:.0} s: restarting it",
                pod.name,
                pod.started.elapsed().as_secs_f64()
            );
            pod.close_life();
            std::thread::sleep(Duration::from_secs(1));
            pod.restarts += 1;
            pod.start(bin)?;
        }
    }
    Ok(())
}

/// Injects `fault`; false when its target does not run right now.
fn inject(
    fault: Fault,
    pods: &[Pod],
    network: &Network,
    worker_ips: &[String; 2],
    gcs: u16,
    serve: u16,
) -> bool {
    let raylet = |w: usize| {
        let needle = format!("--node_ip_address={}", worker_ips[w]);
        find(|comm, cmd| comm == "raylet" && cmd.contains(&needle))
    };
    let target = match fault {
        Fault::KillRaylet(w) | Fault::StopRaylet(w) => raylet(w),
        Fault::KillGcs => {
            let needle = format!("--gcs_server_port={gcs}");
            find(|comm, cmd| comm.starts_with("gcs_server") && cmd.contains(&needle))
        }
        Fault::KillVllm => {
            let (a, b) = (format!("--port {serve}"), format!("--port={serve}"));
            find(|_, cmd| cmd.contains(" serve ") && (cmd.contains(&a) || cmd.contains(&b)))
        }
        Fault::KillWorkerOrchestrator(w) => pods.get(w + 1).and_then(Pod::pid),
        Fault::CutNetwork => {
            if let Err(e) = network.set_link(false) {
                eprintln!("soak: {e:#}");
                return false;
            }
            let (ns, inner) = (network.ns.clone(), network.inner.clone());
            std::thread::spawn(move || {
                std::thread::sleep(OUTAGE);
                if let Err(e) = ip(&["-n", &ns, "link", "set", &inner, "up"]) {
                    eprintln!("soak: cannot set worker 2's link up again: {e:#}");
                }
            });
            return true;
        }
    };
    let Some(pid) = target else {
        return false;
    };
    match fault {
        Fault::StopRaylet(_) => {
            signal(pid, Sig::STOP);
            std::thread::spawn(move || {
                std::thread::sleep(OUTAGE);
                signal(pid, Sig::CONT);
            });
        }
        _ => signal(pid, Sig::KILL),
    }
    true
}
