//! Stopping as documented, with stand-in `ray` programs (no Ray needed):
//! SIGTERM during a `ray start` that hangs ignoring SIGTERM, a second
//! SIGTERM cutting the daemons' grace short, and a failed `ray start`
//! reported with its cause first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes an executable `ray` stand-in running `body` (sh).
fn fake_ray(dir: &Path, body: &str) -> String {
    let path = dir.join("ray");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// `orchestrator run` as a head with `ray` and the given grace, its
/// endpoints on `endpoints` (0: none).
fn run_head(dir: &Path, ray: &str, grace: u32, endpoints: u16) -> Child {
    let config = TestNode::head_using("127.0.0.95", ray)
        .with(|c| {
            c.endpoints_port = endpoints;
            c.ray.stop_grace_seconds = grace.into();
            c.cluster.nodes = Some(1);
            c.cluster.wait_timeout_seconds = 300;
        })
        .write(dir, "head.toml");
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigterm_during_a_hung_ray_start_stops_it_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // `ray start` that ignores SIGTERM and never returns.
    let hung = dir.path().join(format!("hung-ray-start-{}", free_port()));
    std::fs::copy("/bin/sleep", &hung).unwrap();
    let marker = hung.display().to_string();
    let ray = fake_ray(dir.path(), &format!("trap '' TERM\nexec {marker} 300"));
    let mut child = run_head(dir.path(), &ray, 10, 0);
    let log = Captured::stderr_of(&mut child);
    log.wait_for("starting: ", Duration::from_secs(20));
    poll_until("the hung ray start runs", Duration::from_secs(10), || {
        (!processes_with(&marker).is_empty()).then_some(())
    });
    let sent = Instant::now();
    signal(child.id() as i32, Sig::TERM);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", log.text());
    assert!(
        took < Duration::from_secs(8),
        "took {took:?}:\n{}",
        log.text()
    );
    assert!(
        processes_with(&marker).is_empty(),
        "the hung ray start is gone"
    );
}

#[test]
fn a_failed_ray_start_leads_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cause = "ConnectionError: Ray is trying to start at 127.0.0.95:6379, but is already running at 127.0.0.95:6379.";
    let ray = fake_ray(
        dir.path(),
        &format!(
            "echo 'Traceback (most recent call last):' >&2\n\
             for i in $(seq 1 25); do echo \"  File \\\"/ray/scripts.py\\\", line $i, in start\" >&2; done\n\
             echo '{cause}' >&2\nexit 1"
        ),
    );
    let child = run_head(dir.path(), &ray, 5, 0);
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let (_, stderr) = text(&out);
    let line = stderr
        .lines()
        .find(|l| l.contains("`ray start` failed"))
        .unwrap_or_else(|| panic!("no failure line in:\n{stderr}"));
    assert!(
        line.contains(&format!("`ray start` failed: {cause}")),
        "the cause first: {line}"
    );
}

#[test]
fn a_second_sigterm_cuts_the_daemons_grace_short() {
    let dir = tempfile::tempdir().unwrap();
    // `ray start` leaves a "raylet" that ignores SIGTERM in its group.
    let raylet = dir.path().join("raylet");
    std::fs::copy("/bin/sleep", &raylet).unwrap();
    let ray = fake_ray(
        dir.path(),
        &format!("trap '' TERM\n{} 300 &\nexit 0", raylet.display()),
    );
    let endpoints = free_port();
    let mut child = run_head(dir.path(), &ray, 30, endpoints);
    let log = Captured::stderr_of(&mut child);
    log.wait_for("Ray node started", Duration::from_secs(20));
    let at = format!("127.0.0.1:{endpoints}");
    let phase = || status(&at).and_then(|s| s["phase"].as_str().map(str::to_string));
    poll_until("the wait phase", Duration::from_secs(10), || {
        (phase().as_deref() == Some("wait")).then_some(())
    });
    signal(child.id() as i32, Sig::TERM);
    log.wait_for("stopping Ray node", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still in the 30 s grace for the raylet"
    );
    // A stop requested during the wait shows as such, not as `wait`.
    assert_eq!(phase().as_deref(), Some("stopping"));
    let second = Instant::now();
    signal(child.id() as i32, Sig::TERM);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}:\n{}",
        log.text()
    );
    assert_eq!(status.code(), Some(0), "{}", log.text());
    assert!(
        processes_with(&raylet.display().to_string()).is_empty(),
        "the raylet is gone"
    );
}
