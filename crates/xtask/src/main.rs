//! `cargo xtask`: the project's task runner.
//!
//! - `cargo xtask test`: every check (what `.ci/run` runs): installs the
//!   wasm32-wasip2 target, `cargo fmt --check`, clippy with `-D warnings`,
//!   and the whole test suite.
//! - `cargo xtask demo`: the whole job on this machine.
//! - `cargo xtask bench NAME`: one benchmark; its last line is
//!   `BENCH NAME key=value ...`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Guest crates: components for wasm32-wasip2, built by build scripts.
/// Clippy checks them natively; they are never linked natively (their
/// export names are not valid native symbols), so `cargo test` skips them.
const GUEST_PACKAGES: &[&str] = &[
    "readiness-node-count",
    "launch-vllm",
    "health-default",
    "accelerator-readiness",
    "guest-infinite-loop",
    "guest-memory-bomb",
    "guest-panic",
    "guest-sandbox-probe",
    "guest-chatty",
    "guest-wrong-world",
    "guest-wrong-version",
];

const BENCHES: &[(&str, &str)] = &[
    (
        "plugins",
        "cold compile, cache load, instantiate and readiness calls at 3/1,000/10,000 nodes",
    ),
    (
        "wait",
        "join detection: orchestrator wait vs the corrected `ray status` loop on a real local cluster, and their CPU while waiting",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench NAME>\n  test   every check (fmt, clippy, tests)\n  demo   the whole job on this machine\n  bench  one of: {}",
                BENCHES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn step(title: &str) {
    eprintln!("\n==> {title}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Installs what the build needs that cargo does not fetch by itself.
fn ensure_toolchain() -> Result<()> {
    step("toolchain: wasm32-wasip2 target, rustfmt, clippy");
    let has_rustup = Command::new("rustup").arg("--version").output().is_ok();
    if has_rustup {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    } else {
        eprintln!(
            "    rustup not found: assuming the wasm32-wasip2 target, rustfmt and clippy are installed"
        );
    }
    Ok(())
}

/// The Python venv with the pinned Ray (python/requirements-ray.txt),
/// created on first use under `~/.cache/ray-orchestrator/` and keyed by the
/// sha256 of the requirements and the Python version, so later runs and CI
/// on the same machine reuse it. Returns the venv's `ray` executable.
fn ray_venv() -> Result<PathBuf> {
    use sha2::Digest;
    let requirements = root().join("python/requirements-ray.txt");
    let pinned = std::fs::read(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let python = std::env::var("ORCHESTRATOR_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .with_context(|| {
            format!("cannot run {python}: install Python 3.9-3.12 (or set ORCHESTRATOR_PYTHON)")
        })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let mut hash = sha2::Sha256::new();
    hash.update(&pinned);
    hash.update(version.as_bytes());
    let key = hex::encode(&hash.finalize()[..8]);
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let venv = cache
        .join("ray-orchestrator")
        .join(format!("venv-ray-{key}"));
    let ray = venv.join("bin/ray");
    if venv.join(".complete").is_file() && ray.is_file() {
        eprintln!("    Ray venv: {} (cached)", venv.display());
        return Ok(ray);
    }
    step(&format!(
        "create the Ray venv ({version}, python/requirements-ray.txt) in {}",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove the partial venv {}", venv.display()))?;
    }
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(venv.join(".complete"), &version)?;
    Ok(ray)
}

fn test() -> Result<()> {
    let start = Instant::now();
    ensure_toolchain()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy -D warnings (host and guest crates)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo test (unit, plugin host with real components, CLI)");
    let mut test = cargo();
    test.args(["test", "--workspace", "--release", "--locked"]);
    for guest in GUEST_PACKAGES {
        test.args(["--exclude", guest]);
    }
    run(&mut test)?;
    eprintln!(
        "\nall checks passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn orchestrator_binary() -> Result<PathBuf> {
    step("build the orchestrator (release)");
    run(cargo().args(["build", "--release", "--locked", "-p", "orchestrator"]))?;
    let bin = root().join("target/release/orchestrator");
    if !bin.is_file() {
        bail!("expected {} after the build", bin.display());
    }
    Ok(bin)
}

fn demo() -> Result<()> {
    ensure_toolchain()?;
    let bin = orchestrator_binary()?;
    let snapshots = root().join("examples/snapshots");
    step("built-in policies");
    run(Command::new(&bin).args(["plugin", "list"]))?;
    let cases = [
        ("builtin:node-count", "readiness-missing-worker.json"),
        ("builtin:node-count", "readiness-ready.json"),
        ("builtin:vllm", "launch-two-gpu-nodes.json"),
        ("builtin:vllm", "launch-impossible-tp4.json"),
        ("builtin:default", "health-server-exited.json"),
        ("builtin:default", "health-wedged-engine.json"),
    ];
    for (plugin, input) in cases {
        step(&format!(
            "orchestrator plugin run {plugin} --input examples/snapshots/{input}"
        ));
        run(Command::new(&bin)
            .args(["plugin", "run", plugin, "--input"])
            .arg(snapshots.join(input)))?;
    }
    step("the example custom policy (examples/accelerator-readiness)");
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
        "-p",
        "accelerator-readiness",
    ]))?;
    let wasm = root().join("target/wasm32-wasip2/release/accelerator_readiness.wasm");
    run(Command::new(&bin).args(["plugin", "check"]).arg(&wasm))?;
    run(Command::new(&bin)
        .args(["plugin", "run"])
        .arg(&wasm)
        .args([
            "--param",
            "accelerator=a100",
            "--param",
            "nodes=2",
            "--input",
        ])
        .arg(snapshots.join("readiness-worker-died.json")))?;
    let ray = ray_venv()?;
    step(
        "a real local Ray cluster: head + 2 workers on 127.0.0.2-4, the wait phase, then a clean stop",
    );
    run(Command::new(&bin)
        .args([
            "local",
            "--workers",
            "2",
            "--worker-delay",
            "2",
            "--memory-mib",
            "500",
            "--object-store-mib",
            "80",
            "--exit-when-ready",
        ])
        .env("ORCHESTRATOR_RAY_BIN", &ray))?;
    step("`orchestrator plan` for the sample head configuration");
    run(Command::new(&bin)
        .args(["plan", "--config"])
        .arg(root().join("examples/config/head.toml")))?;
    eprintln!("\ndemo finished");
    Ok(())
}

fn bench(name: Option<&str>) -> Result<()> {
    match name {
        Some("plugins") => {
            ensure_toolchain()?;
            step("bench plugins");
            run(cargo().args([
                "run",
                "--release",
                "--locked",
                "-p",
                "orchestrator-policy-host",
                "--example",
                "bench_plugins",
            ]))
        }
        Some("wait") => {
            ensure_toolchain()?;
            let ray = ray_venv()?;
            step("build (release)");
            run(cargo().args([
                "build",
                "--release",
                "--locked",
                "-p",
                "orchestrator",
                "-p",
                "orchestrator-phases",
                "--examples",
            ]))?;
            step("bench wait");
            run(cargo()
                .args([
                    "run",
                    "--release",
                    "--locked",
                    "-p",
                    "orchestrator-phases",
                    "--example",
                    "bench_wait",
                    "--",
                ])
                .arg(root().join("target/release/orchestrator"))
                .env("ORCHESTRATOR_RAY_BIN", &ray))
        }
        other => {
            let known: Vec<String> = BENCHES.iter().map(|(n, d)| format!("  {n}: {d}")).collect();
            bail!(
                "unknown benchmark {:?}; available:\n{}",
                other.unwrap_or(""),
                known.join("\n")
            )
        }
    }
}
