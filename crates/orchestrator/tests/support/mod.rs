//! Helpers shared by the integration tests that start real processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.contains(needle) && pid != std::process::id() as i32 {
            found.push((pid, cmdline));
        }
    }
    found
}

pub fn assert_nothing_left(needles: &[&str]) {
    // Give PID 1 a moment for anything re-parented to it.
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

/// A plain HTTP/1.0 GET over a TCP socket (no client library needed).
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Stops orchestrators a test started if the test fails first: SIGTERM
/// (they stop vLLM and their Ray nodes, up to vLLM's 30 s drain), then
/// SIGKILL after 60 s.
pub struct Guard(pub Vec<i32>);

impl Drop for Guard {
    fn drop(&mut self) {
        for pid in &self.0 {
            if let Some(p) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for pid in &self.0 {
            while Instant::now() < deadline
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(true);
                if zombie {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(p) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

pub fn sigterm(child: &Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

/// Waits for `child` with a deadline; kills it if it overruns.
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

/// The pid of the raylet whose node address is `ip` (matched by its
/// command name, not its arguments: the dashboard agent's arguments name
/// the raylet too).
pub fn raylet_of(ip: &str) -> Option<i32> {
    processes_with(&format!("--node_ip_address={ip}"))
        .into_iter()
        .find(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "raylet")
        })
        .map(|(pid, _)| pid)
}
