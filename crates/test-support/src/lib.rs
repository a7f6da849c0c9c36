//! # orchestrator-test-support
//!
//! What the integration tests and the benchmarks share, written once:
//!
//! - where the real parts are: [`ray_bin`], [`required_env`];
//! - [`free_port`], so tests never collide on fixed ports;
//! - a small blocking HTTP/1.0 client with a timeout ([`http`],
//!   [`http_get`]);
//! - `/proc` scans on top of the library's ([`processes_with`],
//!   [`parent_of`], [`raylet_of`], [`assert_nothing_left`]);
//! - waiting with a deadline, never without ([`poll_until`],
//!   [`status_until`], [`wait_with_deadline`]);
//! - signals through the kill system call, never the `kill` program
//!   ([`signal`], [`signal_group`]), and guards that stop what a failed
//!   test started ([`Guard`], [`GroupGuard`]);
//! - the GCS's own view, to measure against ([`gcs_death_time`],
//!   [`gcs_nodes`]);
//! - a head's or a worker's configuration built from the orchestrator's
//!   own `Config`, not TOML text ([`TestNode`]).
// Test code: a failed expectation is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "cluster")]
use orchestrator_phases::supervision::procfs;
use rustix::process::{Pid, Signal};
use std::io::{Read, Write};
use std::process::{Child, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use rustix::process::Signal as Sig;

mod nginx;
pub use nginx::{Nginx, nginx_bin};
#[cfg(feature = "cluster")]
mod node_config;
#[cfg(feature = "cluster")]
pub use node_config::TestNode;

#[cfg(feature = "cluster")]
/// Ray's `ray` executable from `ORCHESTRATOR_RAY_BIN` (`cargo xtask test`
/// sets it to the pinned venv's).
pub fn ray_bin() -> String {
    required_env(
        "ORCHESTRATOR_RAY_BIN",
        "Ray 2.60's `ray`; `cargo xtask test` sets it up",
    )
}

/// An environment variable the test cannot run without; `what` says what
/// it must name.
pub fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must point at {what}"))
}

/// A TCP port that was free on loopback a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A free port on `ip` (a loopback address).
pub fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code (0 when the status line did not parse).
    pub status: u16,
    /// The body.
    pub body: String,
}

/// One HTTP/1.0 request with a JSON body, answered within `timeout`;
/// `None` when the server cannot be reached or does not answer in time.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<Reply> {
    let text = raw_http(address, method, path, body, timeout)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(Reply {
        status,
        body: body.to_string(),
    })
}

fn raw_http(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<String> {
    let socket: std::net::SocketAddr = address.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A GET within 2 s, as the raw response text (status line, headers,
/// body); empty when nothing answers.
pub fn http_get(address: &str, path: &str) -> String {
    raw_http(address, "GET", path, "", Duration::from_secs(2)).unwrap_or_default()
}

/// `/status` of the orchestrator whose endpoints are at `address`.
pub fn status(address: &str) -> Option<serde_json::Value> {
    let reply = http(address, "GET", "/status", "", Duration::from_secs(2))?;
    serde_json::from_str(&reply.body).ok()
}

/// CPU-seconds a running process has used, all threads, from
/// /proc/PID/task/*/schedstat (nanoseconds: far finer than clock ticks);
/// `None` once it is gone.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 / 1e9)
}

/// Calls `check` every 50 ms until it gives a value; panics naming `what`
/// after `limit`.
pub fn poll_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `/status` on 127.0.0.1:`port` until `check` accepts it.
pub fn status_until(
    port: u16,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_status(port, limit, None, check)
}

/// [`status_until`] for an orchestrator whose log is `log`: a timeout
/// shows the log's tail too (an orchestrator that exited says why there).
pub fn status_until_logged(
    log: &std::path::Path,
    port: u16,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_status(port, limit, Some(log), check)
}

fn poll_status(
    port: u16,
    limit: Duration,
    log: Option<&std::path::Path>,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let address = format!("127.0.0.1:{port}");
    let mut last = serde_json::Value::Null;
    let started = Instant::now();
    let mut last_answer: Option<Duration> = None;
    loop {
        if let Some(s) = status(&address) {
            if check(&s) {
                return s;
            }
            last = s;
            last_answer = Some(started.elapsed());
        }
        if started.elapsed() > limit {
            let answered = match last_answer {
                Some(at) => format!("last answered {:.1} s into the wait", at.as_secs_f64()),
                None => "never answered".to_string(),
            };
            let tail = log
                .map(|log| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let from = lines.len().saturating_sub(40);
                    format!(
                        "\nlog {} (last 40 lines):\n{}",
                        log.display(),
                        lines[from..].join("\n")
                    )
                })
                .unwrap_or_default();
            panic!(
                "/status on port {port} never matched within {limit:?} ({answered}); last: {last:#}{tail}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(feature = "cluster")]
/// Live (non-zombie) processes whose command line contains `needle`,
/// with that command line.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    procfs::processes()
        .into_iter()
        .filter(|p| !p.is_zombie() && p.pid != me)
        .filter_map(|p| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((p.pid, cmdline))
        })
        .collect()
}

#[cfg(feature = "cluster")]
/// Panics if a process matching any needle is still alive 3 s from now.
pub fn assert_nothing_left(needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<_> = needles.iter().flat_map(|n| processes_with(n)).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("processes left behind: {left:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(feature = "cluster")]
/// The parent of `pid`, if it runs.
pub fn parent_of(pid: i32) -> Option<i32> {
    procfs::processes()
        .into_iter()
        .find(|p| p.pid == pid)
        .map(|p| p.ppid)
}

#[cfg(feature = "cluster")]
/// Whether `pid` runs (and is not a zombie).
pub fn is_alive(pid: i32) -> bool {
    procfs::processes()
        .into_iter()
        .any(|p| p.pid == pid && !p.is_zombie())
}

#[cfg(feature = "cluster")]
/// The pid of a live process whose command line contains every one of
/// `needles`.
pub fn pid_with_args(needles: &[&str]) -> Option<i32> {
    procfs::processes()
        .into_iter()
        .filter(|p| !p.is_zombie())
        .find(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
                let line = String::from_utf8_lossy(&c).replace('\0', " ");
                needles.iter().all(|n| line.contains(n))
            })
        })
        .map(|p| p.pid)
}

#[cfg(feature = "cluster")]
/// The pid of the raylet whose node address is `ip` (matched by its
/// command name, not its arguments: the dashboard agent's arguments name
/// the raylet too).
pub fn raylet_of(ip: &str) -> Option<i32> {
    let needle = format!("--node_ip_address={ip}");
    procfs::processes()
        .into_iter()
        .filter(|p| p.comm == "raylet" && !p.is_zombie())
        .find(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&needle)
            })
        })
        .map(|p| p.pid)
}

/// Every `.rs` file under `dir`, walked depth first (for tests that read
/// the source tree).
pub fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sends `sig` to `pid` through the kill system call.
pub fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Sends `sig` to the process group `pgid` through the kill system call
/// (never the `kill` program: procps-ng 4.0.2's `kill -TERM -<pgid>` was
/// seen reaching processes outside the group).
pub fn signal_group(pgid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Waits for `child` (kept by the caller) with a deadline; panics if it
/// overruns. Returns its exit status.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `PATH` whose `vllm` is the stand-in vLLM of the phases' tests
/// (`crates/phases/tests/fixtures/stand_in_vllm.py`), copied into
/// `dir/bin` (so its processes' command lines name this test's own
/// folder: see [`stand_in_vllm_script`]), ahead of the inherited `PATH`.
pub fn stand_in_vllm_path(dir: &std::path::Path) -> String {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../phases/tests/fixtures/stand_in_vllm.py"
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = stand_in_vllm_script(dir);
    std::fs::copy(fixture, &script).unwrap();
    let vllm = bin.join("vllm");
    std::fs::write(&vllm, format!("#!/bin/sh\nexec python3 {script} \"$@\"\n")).unwrap();
    let mut perms = std::fs::metadata(&vllm).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&vllm, perms).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The stand-in vLLM script [`stand_in_vllm_path`] writes for `dir`: a
/// needle that finds this test's stand-ins and no other test's (tests of
/// other binaries may run at the same time).
pub fn stand_in_vllm_script(dir: &std::path::Path) -> String {
    dir.join("bin/stand_in_vllm.py").display().to_string()
}

/// Waits for `child` with a deadline; kills it and panics if it overruns.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("did not exit within {limit:?}: {:?}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(feature = "cluster")]
/// Stops orchestrators a test started if the test fails first: SIGTERM
/// (they stop vLLM and their Ray nodes, up to vLLM's 30 s drain), then
/// SIGKILL after 60 s.
pub struct Guard(pub Vec<i32>);

#[cfg(feature = "cluster")]
impl Drop for Guard {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for pid in &self.0 {
            while Instant::now() < deadline && is_alive(*pid) {
                std::thread::sleep(Duration::from_millis(100));
            }
            signal(*pid, Signal::KILL);
        }
    }
}

/// Kills process groups a test started if the test fails before
/// stopping them (a failed test must not leave Ray running).
#[derive(Default)]
pub struct GroupGuard(std::sync::Mutex<Vec<i32>>);

impl GroupGuard {
    /// Guards `pgid` too.
    pub fn add(&self, pgid: i32) {
        if let Ok(mut groups) = self.0.lock() {
            groups.push(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        for pgid in self.0.lock().map(|v| v.clone()).unwrap_or_default() {
            signal_group(pgid, Signal::KILL);
        }
    }
}

#[cfg(feature = "cluster")]
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[cfg(feature = "cluster")]
/// When the GCS at `address` marked a node dead (`end_time_ms`), if one is.
pub fn gcs_death_time(address: &str) -> Option<u64> {
    use orchestrator_ray_gcs::proto::node_info_gcs_service_client::NodeInfoGcsServiceClient;
    block_on(async {
        let mut client = NodeInfoGcsServiceClient::connect(format!("http://{address}"))
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
    })
}

#[cfg(feature = "cluster")]
/// Every node the GCS at `address` knows.
pub fn gcs_nodes(address: &str) -> Vec<orchestrator_domain::Node> {
    block_on(async {
        let client =
            orchestrator_ray_gcs::GcsClient::connect_until(address, Duration::from_secs(10))
                .await
                .unwrap();
        client.get_all_nodes().await.unwrap()
    })
}

#[cfg(feature = "cluster")]
/// Every live descendant of this process (children, their children, ...):
/// with this process a subreaper, orphans of what it started count too.
pub fn descendants() -> Vec<procfs::ProcEntry> {
    descendants_of(std::process::id() as i32)
}

#[cfg(feature = "cluster")]
/// Every live descendant of `root`.
pub fn descendants_of(root: i32) -> Vec<procfs::ProcEntry> {
    let all = procfs::processes();
    let mut found: Vec<procfs::ProcEntry> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent && !p.is_zombie()) {
            if !found.iter().any(|f| f.pid == p.pid) {
                parents.push(p.pid);
                found.push(p.clone());
            }
        }
    }
    found
}

#[cfg(feature = "cluster")]
/// A pod's death for `root` and everything under it: each process frozen
/// with SIGSTOP (so none forks or notices another's death), then all
/// SIGKILLed at once. Returns the pids killed, `root` first.
pub fn kill_tree(root: i32) -> Vec<i32> {
    signal(root, Signal::STOP);
    let mut frozen = vec![root];
    loop {
        let more: Vec<i32> = frozen
            .iter()
            .flat_map(|p| descendants_of(*p))
            .map(|p| p.pid)
            .filter(|p| !frozen.contains(p))
            .collect();
        if more.is_empty() {
            break;
        }
        for pid in more {
            if !frozen.contains(&pid) {
                signal(pid, Signal::STOP);
                frozen.push(pid);
            }
        }
    }
    for pid in &frozen {
        signal(*pid, Signal::KILL);
    }
    frozen
}

#[cfg(feature = "cluster")]
/// SIGKILLs every descendant (and its process group) and reaps what it
/// can; returns how many were still running. The last resort of a
/// benchmark or test that must leave nothing behind.
pub fn kill_descendants() -> usize {
    let left = descendants();
    for p in &left {
        signal_group(p.pgid, Signal::KILL);
        signal(p.pid, Signal::KILL);
    }
    // Reap our own zombies (the rest go to their parents or to us).
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
    left.len()
}

#[cfg(feature = "cluster")]
/// Waits for `child` without blocking the async runtime, up to `limit`;
/// then SIGKILLs it and waits for that. Returns its exit status.
pub async fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(None) => {
                let _ = child.kill();
                return tokio::task::block_in_place(|| child.wait().ok());
            }
            Err(_) => return None,
        }
    }
}

#[cfg(feature = "cluster")]
/// [`http`] from async code: the blocking request runs on the blocking
/// pool, so the runtime's workers stay free.
pub async fn http_async(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<Reply> {
    let (address, method, path, body) = (
        address.to_string(),
        method.to_string(),
        path.to_string(),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || http(&address, &method, &path, &body, timeout))
        .await
        .ok()
        .flatten()
}

/// A child's stderr, read by a thread as it is written, so a test can wait
/// for a line while the child runs.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<String>>);

impl Captured {
    /// Starts reading `child`'s stderr (spawned with `Stdio::piped()`).
    pub fn stderr_of(child: &mut Child) -> Self {
        let captured = Self::default();
        if let Some(mut stderr) = child.stderr.take() {
            let sink = captured.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut text) = sink.0.lock() {
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        captured
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until `needle` was written; panics after `limit` with the text.
    pub fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(needle) {
            if Instant::now() > deadline {
                panic!("{needle:?} not written within {limit:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How soon after the ready decision the orchestrator started the serving
/// process, in microseconds, from its log (`serving process started after
/// the ready decision ... after_us=N`).
pub fn launch_after_ready_us(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("serving process started after the ready decision"))
        .and_then(|l| l.split("after_us=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Runs `cmd` to its end with its output captured (read as it comes, so a
/// full pipe never blocks it); kills it and panics if it takes longer than
/// `limit`.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The test-only NVML stand-in library (`crates/nvml-standin`), built by
/// the workspace build next to the test binaries.
pub fn nvml_standin_library() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/examples/<bench>
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let path = profile_dir.join("libnvml_standin.so");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release -p nvml-standin` (cargo xtask test does)",
        path.display()
    );
    path
}

/// The node id Ray's fake multi-node provider gives the head (its
/// `head_node_id`); its workers count up from it (`...00001`).
#[cfg(feature = "cluster")]
pub const FAKE_HEAD_NODE_ID: &str = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000";

/// A head whose one GPU worker group starts at zero nodes, under Ray's
/// real autoscaler (its monitor, with the fake multi-node provider
/// through `provider_dir/loopback_provider.py`, which starts real raylets
/// on `worker_ip`), serving the stand-in vLLM: the files it runs from.
#[cfg(feature = "cluster")]
pub struct FromZeroHead {
    /// The head's configuration (`orchestrator run --config`).
    pub config: std::path::PathBuf,
    /// Its endpoints port on 127.0.0.1.
    pub endpoints: u16,
    /// Its GCS port.
    pub gcs: u16,
    /// The port the model is served on.
    pub serve: u16,
    /// Ray's temp dir.
    pub temp: String,
}

/// What a [`FromZeroHead`] serves.
#[cfg(feature = "cluster")]
pub enum Serving<'a> {
    /// The stand-in vLLM, found on PATH ([`stand_in_vllm_path`]).
    StandIn,
    /// Real vLLM (the CPU build with the test platform plugin):
    /// `model` tensor-parallel over the head and the worker.
    Vllm {
        /// The model's directory.
        model: &'a str,
        /// The `vllm` executable.
        vllm: &'a str,
    },
}

#[cfg(feature = "cluster")]
impl FromZeroHead {
    /// Writes the autoscaling config and the head's configuration into
    /// `dir`; `request` turns `[cluster] request-resources` on.
    pub fn write(
        dir: &std::path::Path,
        head_ip: &str,
        worker_ip: &str,
        provider_dir: &std::path::Path,
        request: bool,
        serving: Serving<'_>,
    ) -> Self {
        let (gcs, endpoints, serve) = (free_port(), free_port(), free_port());
        let temp = format!("/tmp/ray-t{gcs}");
        let autoscaling = dir.join("autoscaling.yaml");
        std::fs::write(
            &autoscaling,
            format!(
                r#"cluster_name: from-zero
max_workers: 2
upscaling_speed: 1.0
idle_timeout_minutes: 5
provider:
  type: external
  module: loopback_provider.LoopbackProvider
  gcs_address: "{head_ip}:{gcs}"
  node_ip: "{worker_ip}"
  disable_node_updaters: true
  disable_launch_config_check: true
  use_node_id_as_ip: true
head_node_type: ray.head.default
available_node_types:
  ray.head.default:
    resources: {{CPU: 1, GPU: 1}}
    node_config: {{}}
    max_workers: 0
  gpu-worker:
    resources: {{CPU: 1, GPU: 1, object_store_memory: 200000000}}
    node_config: {{}}
    min_workers: 0
    max_workers: 2
auth:
  ssh_user: ray
head_node: {{}}
worker_nodes: {{}}
file_mounts: {{}}
cluster_synced_files: []
file_mounts_sync_continuously: false
initialization_commands: []
setup_commands: []
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands: []
worker_start_ray_commands: []
"#
            ),
        )
        .unwrap();
        let node = TestNode::head(head_ip).with(|c| {
            c.ray.gcs_port = gcs;
            c.ray.temp_dir = Some(temp.clone().into());
            c.endpoints_port = endpoints;
            c.ray.num_gpus = Some(1.0);
            c.ray.extra_args = vec![format!("--autoscaling-config={}", autoscaling.display())];
            for (key, value) in [
                ("RAY_FAKE_CLUSTER", "1".to_string()),
                (
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING",
                    FAKE_HEAD_NODE_ID.to_string(),
                ),
                ("PYTHONPATH", provider_dir.display().to_string()),
                ("VLLM_CPU_RAY_TEST_PLATFORM", "1".to_string()),
            ] {
                c.ray.env.insert(key.into(), value);
            }
            c.cluster.request_resources = request;
            c.cluster.wait_timeout_seconds = 180;
            c.cluster.groups = vec![orchestrator_phases::config::GroupConfig {
                name: "gpu-worker".into(),
                replicas: 1,
                gpus_per_node: 1.0,
                ..Default::default()
            }];
            c.node_health.enabled = false;
            c.serve.port = serve;
            match serving {
                Serving::StandIn => {
                    c.serve.model = Some("/models/tiny".into());
                    c.serve.host = "127.0.0.1".into();
                    c.serve.health_interval_ms = 200;
                    c.serve.stop_grace_seconds = 3;
                }
                Serving::Vllm { model, vllm } => {
                    TestNode::serve_tiny_on_cpu_vllm(c, model, vllm, head_ip);
                    c.serve.pipeline_parallel_size = Some(1);
                    c.serve.stop_grace_seconds = 30;
                }
            }
        });
        let config = node.write(dir, "head.toml");
        Self {
            config,
            endpoints,
            gcs,
            serve,
            temp,
        }
    }
}

/// One 4-token completion of the model served as `tiny` at `server`;
/// returns the generated text.
#[cfg(feature = "cluster")]
pub fn complete(server: &str) -> Result<String, String> {
    let body = r#"{"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}"#;
    let reply = http(
        server,
        "POST",
        "/v1/completions",
        body,
        Duration::from_secs(60),
    )
    .ok_or("no answer")?;
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.body));
    }
    let json: serde_json::Value = serde_json::from_str(&reply.body).map_err(|e| e.to_string())?;
    json["choices"][0]["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no choices: {json}"))
}

/// A native-backend group on loopback (`backend = "native"`, no Ray): each
/// rank its own `orchestrator run` on its own address, the leader serving
/// real vLLM (the CPU build) tensor-parallel over the ranks.
#[cfg(feature = "cluster")]
pub struct NativeGroup {
    /// The `orchestrator` binary.
    pub binary: std::path::PathBuf,
    /// Where configurations and logs go.
    pub dir: std::path::PathBuf,
    /// Rank r runs on 127.0.0.(base + r).
    pub base: u8,
    /// Ranks, the leader included.
    pub size: u32,
    /// Every rank's endpoints port (on its own address).
    pub endpoints: u16,
    /// The port vLLM serves on (the leader's address).
    pub serve: u16,
    /// Where torch.distributed meets.
    pub master: u16,
    /// The model's directory.
    pub model: String,
    /// The `vllm` executable.
    pub vllm: String,
    /// The launch policy's `early-launch` (every rank starts as it
    /// registers; false: the group starts once every rank is present).
    pub early_launch: bool,
    /// Each rank's address instead of loopback (rank r: the r-th).
    pub addresses: Vec<String>,
    /// More configuration: key lines first (they land in
    /// `[policies.health.params]`), then tables; `{rank}` is the rank.
    pub extra_toml: String,
    /// A folder of each rank's own (`{rank}` in the first path) mounted
    /// on the second in a mount namespace of the rank's (needs root): the
    /// same path holds something else on every rank, as on separate
    /// machines.
    pub rank_mount: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// vLLM with `--enforce-eager` (no torch.compile; the default, for
    /// speed); false: vLLM compiles.
    pub enforce_eager: bool,
}

#[cfg(feature = "cluster")]
impl NativeGroup {
    /// A group of `size` ranks from 127.0.0.`base`, its ports picked.
    pub fn new(
        binary: impl Into<std::path::PathBuf>,
        dir: &std::path::Path,
        base: u8,
        size: u32,
        model: &str,
        vllm: &str,
    ) -> Self {
        Self {
            binary: binary.into(),
            dir: dir.to_path_buf(),
            base,
            size,
            endpoints: free_port(),
            serve: free_port(),
            master: free_port(),
            model: model.to_string(),
            vllm: vllm.to_string(),
            early_launch: true,
            addresses: Vec::new(),
            extra_toml: String::new(),
            rank_mount: None,
            enforce_eager: true,
        }
    }

    /// Rank `rank`'s address.
    pub fn address(&self, rank: u32) -> String {
        match self.addresses.get(rank as usize) {
            Some(address) => address.clone(),
            None => format!("127.0.0.{}", u32::from(self.base) + rank),
        }
    }

    /// Rank `rank`'s endpoints, `HOST:PORT`.
    pub fn endpoints_of(&self, rank: u32) -> String {
        format!("{}:{}", self.address(rank), self.endpoints)
    }

    /// The served API, `HOST:PORT`.
    pub fn server(&self) -> String {
        format!("{}:{}", self.address(0), self.serve)
    }

    /// Rank `rank`'s configuration file, written.
    pub fn config(&self, rank: u32) -> std::path::PathBuf {
        let (leader, own) = (self.address(0), self.address(rank));
        let path = self.dir.join(format!("rank-{rank}.toml"));
        // The group's secret, as a mounted Secret would hold it.
        let secret = self.dir.join("group-secret");
        std::fs::write(&secret, "test-group-secret-0123456789\n").unwrap();
        std::fs::write(
            &path,
            format!(
                r#"backend = "native"
endpoints-host = "{own}"
endpoints-port = {endpoints}
[native]
secret-file = "{secret}"
rank = {rank}
group-size = {size}
leader-address = "{leader}"
node-address = "{own}"
master-port = {master}
gpus = 1
heartbeat-ms = 250
heartbeat-timeout-ms = 3000
leader-wait-seconds = 300
[cluster]
wait-timeout-seconds = 400
[serve]
model = "{model}"
served-model-name = "tiny"
tensor-parallel-size = {size}
host = "{leader}"
port = {serve}
extra-args = ["--max-model-len", "256", "--dtype", "bfloat16"{eager}]
health-interval-ms = 500
generation-interval-ms = 5000
stop-grace-seconds = 10
drain-timeout-seconds = 0
[policies.launch.params]
program = "{vllm}"
early-launch = "{early}"
"env.VLLM_HOST_IP" = "{leader}"
"env.VLLM_CPU_KVCACHE_SPACE" = "1"
"env.HF_HUB_OFFLINE" = "1"
[policies.health.params]
backoff-ms = "200"
{extra}
"#,
                endpoints = self.endpoints,
                size = self.size,
                master = self.master,
                model = self.model,
                serve = self.serve,
                vllm = self.vllm,
                early = self.early_launch,
                eager = if self.enforce_eager {
                    ", \"--enforce-eager\""
                } else {
                    ""
                },
                secret = secret.display(),
                extra = self.extra_toml.replace("{rank}", &rank.to_string()),
            ),
        )
        .unwrap();
        path
    }

    /// Starts rank `rank`'s orchestrator, its log in `rank-R.log` (run
    /// `run` for a second start of the same rank).
    pub fn start(&self, rank: u32, run: u32) -> std::process::Child {
        let log = self.dir.join(format!("rank-{rank}-{run}.log"));
        let mut command = match &self.rank_mount {
            Some((own, at)) => {
                let own = std::path::PathBuf::from(
                    own.display()
                        .to_string()
                        .replace("{rank}", &rank.to_string()),
                );
                in_own_mounts(&own, at, &self.binary)
            }
            None => std::process::Command::new(&self.binary),
        };
        command
            .args(["run", "--config"])
            .arg(self.config(rank))
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap()
    }

    /// One completion through the leader's API.
    pub fn complete(&self) -> Result<String, String> {
        complete(&self.server())
    }

    /// Polls until a completion succeeds (within `limit`).
    pub fn until_serving(&self, limit: Duration) -> String {
        poll_until("a completion from the native group", limit, || {
            self.complete().ok()
        })
    }

    /// Rank `rank`'s serving process (its process group), from `/status`.
    pub fn server_pid(&self, rank: u32) -> Option<i32> {
        status(&self.endpoints_of(rank))
            .and_then(|s| s["server-pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
    }

    /// Processes still in any of `groups`.
    pub fn left_in(groups: &[i32]) -> Vec<(i32, String)> {
        procfs::processes()
            .into_iter()
            .filter(|p| !p.is_zombie() && groups.contains(&p.pgid))
            .map(|p| (p.pid, p.comm))
            .collect()
    }
}

/// `program` as `unshare -m`, with `own` mounted on `at` first (needs
/// root): a node's own folder at the path every node uses, as on separate
/// machines. Both folders are made.
pub fn in_own_mounts(
    own: &std::path::Path,
    at: &std::path::Path,
    program: &std::path::Path,
) -> std::process::Command {
    std::fs::create_dir_all(own).unwrap();
    std::fs::create_dir_all(at).unwrap();
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" \"$1\" && shift && exec \"$@\"",
        ])
        .arg(own)
        .arg(at)
        .arg(program);
    unshare
}

/// This repository's root folder.
pub fn repository_root() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// `program` as `unshare -m`, with an empty tmpfs mounted over this
/// repository first (needs root): what a machine without the source tree
/// sees. `program` itself must live outside the repository.
pub fn without_repository(program: &std::path::Path) -> std::process::Command {
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs none \"$0\" && exec \"$@\"",
        ])
        .arg(repository_root())
        .arg(program);
    unshare
}

/// The bytes of every file under `dir`, hidden ones (a store's
/// `.orchestrator` state) left out; 0 for a folder that is not there.
pub fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                folder_bytes(&path)
            } else {
                std::fs::metadata(&path).map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// What [`NativeGroup::scenario`] measured.
#[cfg(feature = "cluster")]
#[derive(Debug, Clone, Copy)]
pub struct NativeFigures {
    /// The leader alone until this long before the worker started.
    pub worker_delay: Duration,
    /// The last rank's orchestrator started -> the first completion.
    pub last_rank_to_completion: Duration,
    /// A rank's vLLM killed (SIGKILL) -> a completion again.
    pub death_to_serving: Duration,
    /// A worker's whole pod lost (orchestrator and vLLM killed), a new
    /// one started at once -> a completion again.
    pub lost_worker_to_serving: Duration,
    /// SIGTERM to both -> both exited.
    pub stop: Duration,
}

#[cfg(feature = "cluster")]
impl NativeGroup {
    /// The leader, then the worker `worker_delay` later: the time from the
    /// worker's start to the first completion; then both stopped.
    pub fn first_serving(&self, worker_delay: Duration) -> Duration {
        let mut leader = self.start(0, 0);
        let started = Instant::now();
        let mut guard = Guard(vec![leader.id() as i32]);
        std::thread::sleep(worker_delay.saturating_sub(started.elapsed()));
        let mut worker = self.start(1, 0);
        guard.0.push(worker.id() as i32);
        let t = Instant::now();
        self.until_serving(Duration::from_secs(400));
        let to_completion = t.elapsed();
        let pids = [self.server_pid(0), self.server_pid(1)];
        signal(leader.id() as i32, Signal::TERM);
        signal(worker.id() as i32, Signal::TERM);
        assert!(wait_exit(&mut leader, Duration::from_secs(60)).success());
        assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
        let left = Self::left_in(&pids.into_iter().flatten().collect::<Vec<_>>());
        assert!(left.is_empty(), "left behind: {left:?}");
        to_completion
    }

    /// The whole story on a group of two, asserting along the way: the
    /// leader waits for a worker that starts `worker_delay` late and
    /// serves once it is there; the worker's vLLM rank is killed and the
    /// group restarts; the worker's whole pod is lost and a new one joins;
    /// SIGTERM stops both with exit 0 and nothing left.
    pub fn scenario(&self, worker_delay: Duration) -> NativeFigures {
        assert_eq!(self.size, 2, "the scenario runs a group of two");
        let leader_status = || status(&self.endpoints_of(0)).unwrap_or(serde_json::Value::Null);
        let mut leader = self.start(0, 0);
        let started = Instant::now();
        let mut guard = Guard(vec![leader.id() as i32]);
        let groups = GroupGuard::default();
        poll_until("the leader waiting", Duration::from_secs(30), || {
            (leader_status()["phase"] == "wait").then_some(())
        });
        std::thread::sleep(worker_delay.saturating_sub(started.elapsed()));
        let s = leader_status();
        assert_eq!(s["phase"], "wait", "the leader waits for rank 1: {s}");
        assert_eq!(s["nodes-alive"], 1, "{s}");
        assert!(
            http_get(&self.endpoints_of(0), "/readyz").contains("503"),
            "not ready without rank 1"
        );

        let mut worker = self.start(1, 0);
        guard.0.push(worker.id() as i32);
        let t = Instant::now();
        let text = self.until_serving(Duration::from_secs(400));
        let last_rank_to_completion = t.elapsed();
        eprintln!(
            "native: served {text:?} {:.1} s after the last rank started",
            last_rank_to_completion.as_secs_f64()
        );
        // Ready once the warm-ups (two completions, one after the other)
        // are done too: the test's own completion may come first.
        for rank in [0, 1] {
            poll_until("/readyz 200", Duration::from_secs(30), || {
                http_get(&self.endpoints_of(rank), "/readyz")
                    .contains("200 OK")
                    .then_some(())
            });
        }

        // A rank's vLLM dies: the whole group restarts.
        let (rank0, rank1) = (
            self.server_pid(0).expect("rank 0's vLLM"),
            self.server_pid(1).expect("rank 1's vLLM"),
        );
        groups.add(rank0);
        groups.add(rank1);
        signal_group(rank1, Signal::KILL);
        let t = Instant::now();
        poll_until("the group restart", Duration::from_secs(60), || {
            (leader_status()["restarts"] == 1).then_some(())
        });
        self.until_serving(Duration::from_secs(400));
        let death_to_serving = t.elapsed();
        eprintln!(
            "native: serving again {:.1} s after rank 1's vLLM was killed",
            death_to_serving.as_secs_f64()
        );
        assert!(
            Self::left_in(&[rank0, rank1]).is_empty(),
            "the old ranks are gone: {:?}",
            Self::left_in(&[rank0, rank1])
        );
        let (new0, new1) = (
            self.server_pid(0).expect("rank 0's new vLLM"),
            self.server_pid(1).expect("rank 1's new vLLM"),
        );
        assert!(new0 != rank0 && new1 != rank1, "both ranks were restarted");
        groups.add(new0);
        groups.add(new1);

        // The worker's pod is lost; a new one starts at once.
        signal(worker.id() as i32, Signal::KILL);
        signal_group(new1, Signal::KILL);
        let _ = worker.wait();
        let t = Instant::now();
        let mut worker = self.start(1, 1);
        guard.0.push(worker.id() as i32);
        poll_until(
            "the restart on the lost rank",
            Duration::from_secs(60),
            || (leader_status()["restarts"] == 2).then_some(()),
        );
        self.until_serving(Duration::from_secs(400));
        let lost_worker_to_serving = t.elapsed();
        eprintln!(
            "native: serving again {:.1} s after rank 1's pod was lost",
            lost_worker_to_serving.as_secs_f64()
        );
        let (last0, last1) = (
            self.server_pid(0).expect("rank 0's vLLM"),
            self.server_pid(1).expect("rank 1's vLLM"),
        );
        groups.add(last0);
        groups.add(last1);

        // SIGTERM: both exit 0, nothing left.
        let t = Instant::now();
        signal(leader.id() as i32, Signal::TERM);
        signal(worker.id() as i32, Signal::TERM);
        let leader_exit = wait_exit(&mut leader, Duration::from_secs(60));
        let worker_exit = wait_exit(&mut worker, Duration::from_secs(60));
        let stop = t.elapsed();
        assert!(leader_exit.success(), "leader: {leader_exit:?}");
        assert!(worker_exit.success(), "worker: {worker_exit:?}");
        let all = [rank0, rank1, new0, new1, last0, last1];
        let left = Self::left_in(&all);
        assert!(left.is_empty(), "left behind: {left:?}");
        assert_nothing_left(&[&self.dir.display().to_string()]);
        NativeFigures {
            worker_delay,
            last_rank_to_completion,
            death_to_serving,
            lost_worker_to_serving,
            stop,
        }
    }
}

/// A streaming completion of `tokens` tokens (end of sequence ignored) on
/// a raw connection: a signal at its first chunk, and everything received
/// until the server closed the connection.
pub fn stream_completion(
    server: String,
    model: &str,
    tokens: u32,
) -> (
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<String>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let model = model.to_string();
    let handle = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&server).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let body = format!(
            r#"{{"model":"{model}","prompt":"hello","max_tokens":{tokens},"ignore_eos":true,"temperature":0,"stream":true}}"#
        );
        write!(
            stream,
            "POST /v1/completions HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if !signalled && received.windows(5).any(|w| w == b"data:") {
                let _ = tx.send(());
                signalled = true;
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    });
    (rx, handle)
}
