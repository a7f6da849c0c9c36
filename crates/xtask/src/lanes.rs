//! The test steps of `cargo xtask test`, run in two lanes at once. Entry
//! point: [`run_lanes`].
//!
//! The heavy lane runs the steps with real vLLM (CPU-bound, minutes each),
//! one at a time; the light lane runs the others (unit tests, real Ray,
//! the registry, Redis, nginx: mostly waiting), one at a time, beside it.
//! Test binaries are run directly (cargo built them once), in their
//! package's folder as cargo would, each step's output in
//! `target/xtask-logs/test-<step>.log`. Tests of different files never
//! share a node address (each file has its own 127.0.0.x range) nor a
//! process needle (a stand-in vLLM is named by its test's own folder), so
//! the two lanes cannot see each other's processes as their own.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One step: its name, what it checks, and what runs it.
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) work: Work,
}

/// What a step runs.
pub(crate) enum Work {
    /// Commands, one after the other, their output in the step's log (a
    /// test binary run directly, or cargo).
    Commands(Vec<Command>),
    /// Work of xtask itself (a build and its checks), its output on the
    /// terminal.
    Task(Box<dyn FnOnce() -> Result<()> + Send>),
}

/// A test binary cargo built: its target's name, path and package folder.
pub(crate) struct TestBinary {
    pub(crate) target: String,
    pub(crate) path: PathBuf,
    pub(crate) package_dir: PathBuf,
}

impl TestBinary {
    /// The binaries of `--message-format=json` output of `cargo test
    /// --no-run`: every integration test target's executable.
    pub(crate) fn from_cargo_messages(messages: &str) -> Vec<Self> {
        messages
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "test")
            .filter_map(|m| {
                Some(Self {
                    target: m["target"]["name"].as_str()?.to_string(),
                    path: PathBuf::from(m["executable"].as_str()?),
                    package_dir: Path::new(m["manifest_path"].as_str()?)
                        .parent()?
                        .to_path_buf(),
                })
            })
            .collect()
    }
}

/// The commands that run integration target `target` (in every package
/// that has one of that name): its tests that `filters` select (libtest's
/// names and `--skip NAME`; all when empty), ignored ones included, one at
/// a time, with `env`.
pub(crate) fn target_commands(
    binaries: &[TestBinary],
    target: &str,
    filters: &[&str],
    env: &[(&'static str, PathBuf)],
) -> Result<Vec<Command>> {
    let commands: Vec<Command> = binaries
        .iter()
        .filter(|b| b.target == target)
        .map(|b| {
            let mut cmd = Command::new(&b.path);
            cmd.args(["--include-ignored", "--test-threads=1"])
                .args(filters)
                .current_dir(&b.package_dir)
                .envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        })
        .collect();
    if commands.is_empty() {
        bail!("no test binary named {target} was built");
    }
    Ok(commands)
}

/// Runs `heavy` and `light` side by side, each lane one step at a time;
/// stops starting steps once one failed. Returns every step's seconds.
pub(crate) fn run_lanes(
    heavy: Vec<Step>,
    light: Vec<Step>,
    logs: &Path,
) -> Result<Vec<(String, f64)>> {
    std::fs::create_dir_all(logs)?;
    let failed = AtomicBool::new(false);
    let (heavy, light) = std::thread::scope(|scope| {
        let heavy = scope.spawn(|| run_lane("heavy", heavy, logs, &failed));
        let light = run_lane("light", light, logs, &failed);
        (heavy.join(), light)
    });
    let heavy = heavy.map_err(|_| anyhow::anyhow!("the heavy lane's thread panicked"))?;
    let mut times = heavy?;
    times.extend(light?);
    Ok(times)
}

fn run_lane(
    lane: &str,
    steps: Vec<Step>,
    logs: &Path,
    failed: &AtomicBool,
) -> Result<Vec<(String, f64)>> {
    let mut times = Vec::new();
    for step in steps {
        if failed.load(Ordering::SeqCst) {
            eprintln!(
                "    [{lane}] {} not started: another step failed",
                step.name
            );
            continue;
        }
        let start = Instant::now();
        eprintln!("\n==> [{lane}] {}: {}", step.name, step.what);
        let name = step.name;
        if let Err(e) = run_step(step, logs) {
            failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("    [{lane}] {name} passed in {seconds:.1} s");
        times.push((name.to_string(), seconds));
    }
    Ok(times)
}

fn run_step(step: Step, logs: &Path) -> Result<()> {
    let mut commands = match step.work {
        Work::Task(task) => return task(),
        Work::Commands(commands) => commands,
    };
    let path = logs.join(format!("test-{}.log", step.name));
    let log = std::fs::File::create(&path)?;
    for command in &mut commands {
        let shown = format!("{command:?}");
        let status = command
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run {shown}: {e}"))?;
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
    Ok(())
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
