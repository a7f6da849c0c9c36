//! The test steps of `cargo xtask test`, run in lanes at once, each lane
//! one step at a time. Entry point: [`run_lanes`].
//!
//! The heavy lane runs the steps with real vLLM (CPU-bound, minutes each)
//! as soon as their binaries are built: the longest chain, at the default
//! share. The light lane builds the rest, then runs the unit tests and the
//! Ray steps that share addresses; once that build is done ([`Built`]) the
//! waiting lane runs the Python policies, the tests that only wait for
//! timeouts, the other tests and the head restart, and the lint lane
//! clippy and the doc tests. Compiling (the rest of the build, clippy, the
//! doc tests) runs at [`Share::Leftover`]: it has no deadline, and it
//! takes what the tests leave. Test binaries are run directly (cargo
//! built them once), in their package's folder as cargo would, each test
//! of an integration step on its own, each step's output and each
//! command's time in `target/xtask-logs/test-<step>.log`. Tests
//! that run at the same time never share a node address (each file has
//! its own 127.0.0.x range; weights_group shares ray_cli's and
//! kube_e2e's, so it runs in their lane) nor a process needle (a stand-in
//! vLLM is named by its test's own folder, a real one by its node's
//! address), so the lanes cannot see each other's processes as their own.

use anyhow::{Result, bail};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// One step: its name, what it checks, what runs it, and its share of
/// the CPU.
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) work: Work,
    pub(crate) share: Share,
}

/// How a step's processes share the CPU with the other lanes'.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Share {
    /// The scheduler's default (nice 0): tests, whose deadlines are
    /// wall-clock. (Tests at nice 5 beside the heavy lane were tried:
    /// `ray_cli`, whose Ray health checks time out after 500 ms, failed.)
    Equal,
    /// What the tests leave (nice [`LEFTOVER_NICENESS`]): compiling, which
    /// has no deadline. A real-vLLM test beside a build at equal share
    /// took 2.3 times as long as alone (measured).
    Leftover,
}

impl Share {
    /// The niceness this share runs at (`None`: the default, unchanged).
    pub(crate) fn niceness(self) -> Option<i32> {
        match self {
            Share::Equal => None,
            Share::Leftover => Some(LEFTOVER_NICENESS),
        }
    }
}

/// The niceness of [`Share::Leftover`] steps: CFS weight 110 against 1024
/// at nice 0, so they take about a tenth of a core that a test wants, and
/// all of an idle one.
pub(crate) const LEFTOVER_NICENESS: i32 = 10;

/// What a step runs.
pub(crate) enum Work {
    /// Commands, one after the other, their output in the step's log (a
    /// test binary run directly, or cargo).
    Commands(Vec<Command>),
    /// Work of xtask itself (a build and its checks), its output on the
    /// terminal.
    Task(Box<dyn FnOnce() -> Result<()> + Send>),
    /// Steps made once what they need is there (the test binaries the
    /// light lane builds), run in this step's place.
    Later(Box<dyn FnOnce() -> Result<Vec<Step>> + Send>),
}

/// The test binaries, handed from the step that builds them to the lanes
/// that run them: `None` until then, `Some(None)` when the build failed.
#[derive(Default)]
pub(crate) struct Built {
    binaries: Mutex<Option<Option<Arc<Vec<TestBinary>>>>>,
    changed: Condvar,
}

impl Built {
    /// Hands over the binaries (`None`: the build failed).
    pub(crate) fn set(&self, binaries: Option<Vec<TestBinary>>) {
        if let Ok(mut slot) = self.binaries.lock() {
            *slot = Some(binaries.map(Arc::new));
        }
        self.changed.notify_all();
    }

    /// Waits for the build; its binaries, or an error when it failed.
    pub(crate) fn wait(&self) -> Result<Arc<Vec<TestBinary>>> {
        let mut slot = self
            .binaries
            .lock()
            .map_err(|_| anyhow::anyhow!("a lane panicked"))?;
        loop {
            match &*slot {
                Some(Some(binaries)) => return Ok(Arc::clone(binaries)),
                Some(None) => bail!("not started: the build failed"),
                None => {
                    slot = self
                        .changed
                        .wait(slot)
                        .map_err(|_| anyhow::anyhow!("a lane panicked"))?;
                }
            }
        }
    }
}

/// A test binary cargo built: its target's name and kind, path and
/// package folder.
pub(crate) struct TestBinary {
    pub(crate) target: String,
    pub(crate) kind: TestKind,
    pub(crate) path: PathBuf,
    pub(crate) package_dir: PathBuf,
}

/// Which kind of target a test binary is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TestKind {
    /// A library's or binary's own `#[cfg(test)]` tests.
    Unit,
    /// An integration test target (`tests/*.rs`).
    Integration,
}

impl TestBinary {
    /// The test binaries of `--message-format=json` output of `cargo test
    /// --no-run`: every target built with the test harness that has an
    /// executable.
    pub(crate) fn from_cargo_messages(messages: &str) -> Vec<Self> {
        messages
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
            .filter_map(|m| {
                Some(Self {
                    target: m["target"]["name"].as_str()?.to_string(),
                    kind: if m["target"]["kind"][0] == "test" {
                        TestKind::Integration
                    } else {
                        TestKind::Unit
                    },
                    path: PathBuf::from(m["executable"].as_str()?),
                    package_dir: Path::new(m["manifest_path"].as_str()?)
                        .parent()?
                        .to_path_buf(),
                })
            })
            .collect()
    }
}

/// The commands that run every test binary's tests but the ignored ones
/// (what `cargo test` runs), one binary at a time, but the integration
/// targets named in `skip` (other steps run them whole).
pub(crate) fn unit_commands(binaries: &[TestBinary], skip: &[&str]) -> Vec<Command> {
    binaries
        .iter()
        .filter(|b| !(b.kind == TestKind::Integration && skip.contains(&b.target.as_str())))
        .map(|b| {
            let mut cmd = Command::new(&b.path);
            cmd.current_dir(&b.package_dir);
            cmd
        })
        .collect()
}

/// The commands that run integration target `target` (in every package
/// that has one of that name): one per test that `filters` select
/// (libtest's names and `--skip NAME`; all when empty), ignored ones
/// included, each on its own (`--exact`), so the step's log has each
/// test's time, with `env`.
pub(crate) fn target_commands(
    binaries: &[TestBinary],
    target: &str,
    filters: &[&str],
    env: &[(&'static str, PathBuf)],
) -> Result<Vec<Command>> {
    let mut commands = Vec::new();
    for binary in binaries
        .iter()
        .filter(|b| b.kind == TestKind::Integration && b.target == target)
    {
        let run = |args: &[&str]| {
            let mut cmd = Command::new(&binary.path);
            cmd.args(["--include-ignored", "--test-threads=1"])
                .args(args)
                .current_dir(&binary.package_dir)
                .envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        };
        let listed = run(&["--list"])
            .args(filters)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot list the tests of {target}: {e}"))?;
        if !listed.status.success() {
            bail!(
                "cannot list the tests of {target} ({}): {}",
                listed.status,
                String::from_utf8_lossy(&listed.stderr)
            );
        }
        for name in listed_tests(&String::from_utf8_lossy(&listed.stdout)) {
            commands.push(run(&["--exact", name]));
        }
    }
    if commands.is_empty() {
        bail!("no test binary named {target} was built, or no test of it matches {filters:?}");
    }
    Ok(commands)
}

/// The test names in libtest's `--list` output (`NAME: test` lines).
fn listed_tests(listed: &str) -> Vec<&str> {
    listed
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .collect()
}

/// What a command runs, for the log: a test's name, or the program's file
/// name and its arguments (never its environment, which may hold a token).
fn label(command: &Command) -> String {
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(at) = args.iter().position(|a| a == "--exact")
        && let Some(name) = args.get(at + 1)
    {
        return name.clone();
    }
    let program = Path::new(command.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{program} {}", args.join(" "))
}

/// Runs every lane at once, each one step at a time; stops starting steps
/// once one failed. Returns every step's seconds.
pub(crate) fn run_lanes(
    lanes: Vec<(&'static str, Vec<Step>)>,
    logs: &Path,
) -> Result<Vec<(String, f64)>> {
    std::fs::create_dir_all(logs)?;
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Vec<(String, f64)>>> = std::thread::scope(|scope| {
        let running: Vec<_> = lanes
            .into_iter()
            .map(|(lane, steps)| {
                let failed = &failed;
                scope.spawn(move || run_lane(lane, steps, logs, failed))
            })
            .collect();
        running
            .into_iter()
            .map(|lane| {
                lane.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a lane's thread panicked")))
            })
            .collect()
    });
    let mut times = Vec::new();
    for result in results {
        times.extend(result?);
    }
    Ok(times)
}

fn run_lane(
    lane: &str,
    steps: Vec<Step>,
    logs: &Path,
    failed: &AtomicBool,
) -> Result<Vec<(String, f64)>> {
    let mut times = Vec::new();
    let mut steps: VecDeque<Step> = steps.into();
    while let Some(step) = steps.pop_front() {
        if failed.load(Ordering::SeqCst) {
            eprintln!(
                "    [{lane}] {} not started: another step failed",
                step.name
            );
            continue;
        }
        if let Work::Later(make) = step.work {
            match make() {
                Ok(made) => made.into_iter().rev().for_each(|s| steps.push_front(s)),
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
            continue;
        }
        let start = Instant::now();
        eprintln!("\n==> [{lane}] {}: {}", step.name, step.what);
        let name = step.name;
        let tests = match run_step(step, logs) {
            Ok(tests) => tests,
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("    [{lane}] {name} passed in {seconds:.1} s");
        times.push((name.to_string(), seconds));
        times.extend(tests);
    }
    Ok(times)
}

/// Runs `step` with its [`Share`]: one with a niceness on a thread of its
/// own whose niceness its processes inherit (Linux's niceness is per
/// thread), so the lane's later steps keep the default.
fn run_step(step: Step, logs: &Path) -> Result<Vec<(String, f64)>> {
    let Some(niceness) = step.share.niceness() else {
        return run_step_here(step, logs);
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(e) = rustix::process::setpriority_process(None, niceness) {
                    eprintln!(
                        "    {}: cannot lower its priority ({e}); it runs at the default",
                        step.name
                    );
                }
                run_step_here(step, logs)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a step's thread panicked")))
    })
}

/// Runs a step's work, each command's time in the step's log; returns
/// each test's time when the step runs several (for the table at the
/// end).
fn run_step_here(step: Step, logs: &Path) -> Result<Vec<(String, f64)>> {
    let mut commands = match step.work {
        Work::Task(task) => return task().map(|()| Vec::new()),
        Work::Later(_) => bail!("{}: its steps were not made", step.name),
        Work::Commands(commands) => commands,
    };
    let path = logs.join(format!("test-{}.log", step.name));
    let mut log = std::fs::File::create(&path)?;
    let mut times = Vec::new();
    for command in &mut commands {
        let label = label(command);
        let start = Instant::now();
        let status = command
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {label}: {e}"))?;
        let seconds = start.elapsed().as_secs_f64();
        use std::io::Write;
        writeln!(log, "==== {label}: {seconds:.1} s ({status})")?;
        if command.get_args().any(|a| a == "--exact") {
            times.push((format!("{}: {label}", step.name), seconds));
        }
        if !status.success() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {} (last lines of {})\n{}",
                step.name,
                path.display(),
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
            bail!(
                "{} failed ({status}); its whole output: {}",
                step.name,
                path.display()
            );
        }
    }
    if times.len() == 1 {
        times.clear();
    }
    Ok(times)
}

/// The steps' times, slowest first, as a table for the terminal.
pub(crate) fn slowest_first(times: &[(String, f64)]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    sorted
        .iter()
        .map(|(name, seconds)| format!("    {seconds:>7.1} s  {name}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn artifact(name: &str, kind: &str, test: bool, executable: Option<&str>) -> String {
        serde_json::json!({
            "reason": "compiler-artifact",
            "manifest_path": "/w/crates/phases/Cargo.toml",
            "target": {"name": name, "kind": [kind]},
            "profile": {"test": test},
            "executable": executable,
        })
        .to_string()
    }

    #[test]
    fn every_test_harness_binary_is_found_with_its_kind_and_the_skipped_targets_are_left_out() {
        let messages = [
            artifact("orchestrator_phases", "lib", true, Some("/t/phases-1")),
            artifact("orchestrator_phases", "lib", false, None),
            artifact("serve", "test", true, Some("/t/serve-2")),
            artifact("endpoints_load", "test", true, Some("/t/endpoints_load-3")),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
        ]
        .join("\n");
        let binaries = TestBinary::from_cargo_messages(&messages);
        let found: Vec<(&str, TestKind)> = binaries
            .iter()
            .map(|b| (b.target.as_str(), b.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("orchestrator_phases", TestKind::Unit),
                ("serve", TestKind::Integration),
                ("endpoints_load", TestKind::Integration),
            ]
        );
        assert_eq!(binaries[1].package_dir, Path::new("/w/crates/phases"));
        let units: Vec<String> = unit_commands(&binaries, &["endpoints_load"])
            .iter()
            .map(|c| c.get_program().to_string_lossy().into_owned())
            .collect();
        assert_eq!(units, ["/t/phases-1", "/t/serve-2"]);
        // A step runs integration targets only, never a library of that name.
        assert!(target_commands(&binaries, "orchestrator_phases", &[], &[]).is_err());
    }

    #[test]
    fn each_listed_test_is_run_on_its_own_and_labelled_without_the_environment() {
        let listed = "a_first_test: test\nmod_x::second: test\nsome_bench: benchmark\n\n2 tests, 1 benchmark\n";
        assert_eq!(listed_tests(listed), ["a_first_test", "mod_x::second"]);
        let mut cmd = Command::new("/t/deps/vllm_e2e-1234");
        cmd.args([
            "--include-ignored",
            "--test-threads=1",
            "--exact",
            "a_first_test",
        ])
        .env("RAY_AUTH_TOKEN", "secret-token-value");
        assert_eq!(label(&cmd), "a_first_test");
        let mut cargo = Command::new("/usr/bin/cargo");
        cargo
            .args(["test", "--doc"])
            .env("RAY_AUTH_TOKEN", "secret-token-value");
        assert_eq!(label(&cargo), "cargo test --doc");
    }
}
