//! Policies in Python, through the real host: the example readiness policy
//! ported to Python (`examples/accelerator-readiness-python`) built with
//! the documented command passes the Rust example's own cases, and each
//! world's `plugin new --lang python` project builds and passes its cases
//! untouched. Needs ORCHESTRATOR_POLICY_PYTHON: a Python with the pinned
//! componentize-py and the SDK (`python/policy-sdk`) installed, which
//! `cargo xtask test` provides.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn python() -> String {
    orchestrator_test_support::required_env(
        "ORCHESTRATOR_POLICY_PYTHON",
        "a Python with componentize-py and python/policy-sdk installed (cargo xtask test makes one)",
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    orchestrator_test_support::output_within(cmd, Duration::from_secs(300))
}

fn orchestrator(args: &[&str], cache: &Path) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .env("ORCHESTRATOR_PLUGIN_CACHE_DIR", cache))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The documented command: `python -m orchestrator_policy.build FILE -o OUT`.
fn build(policy: &Path, out: &Path) -> Output {
    run(Command::new(python())
        .args(["-m", "orchestrator_policy.build"])
        .arg(policy)
        .arg("-o")
        .arg(out)
        .current_dir(policy.parent().unwrap()))
}

#[test]
#[ignore = "needs componentize-py: run by `cargo xtask test`"]
fn the_python_example_passes_the_rust_examples_cases() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("accelerator_readiness.wasm");
    let out = build(
        &repo().join("examples/accelerator-readiness-python/accelerator_readiness.py"),
        &wasm,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("built the readiness policy"),
        "{}",
        text(&out)
    );
    let cache = dir.path().join("cache");
    let out = orchestrator(&["plugin", "check", &wasm.display().to_string()], &cache);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("world:   readiness"), "{}", text(&out));
    assert!(text(&out).contains("version: 0.2.0"), "{}", text(&out));
    let cases = repo().join("examples/accelerator-readiness/cases");
    let out = orchestrator(
        &[
            "plugin",
            "test",
            &wasm.display().to_string(),
            &cases.display().to_string(),
        ],
        &cache,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.ends_with("4 passed, 0 failed\n"), "{stdout}");

    // A policy file without exactly one policy class: one line, exit 2.
    let bad = dir.path().join("two.py");
    std::fs::write(
        &bad,
        "from orchestrator_policy import ReadinessPolicy, HealthPolicy\nclass A(ReadinessPolicy): pass\nclass B(HealthPolicy): pass\n",
    )
    .unwrap();
    let out = build(&bad, &dir.path().join("two.wasm"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("must define exactly one policy class")
            && text(&out).contains("A (readiness), B (health)"),
        "{}",
        text(&out)
    );
}

#[test]
#[ignore = "needs componentize-py: run by `cargo xtask test`"]
fn each_worlds_python_project_builds_and_passes_its_cases() {
    // Written by a copy of the binary and built with the repository out
    // of reach: the SDK the project uses is the one written into it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let copy = dir.path().join("orchestrator");
    std::fs::copy(env!("CARGO_BIN_EXE_orchestrator"), &copy).unwrap();
    for world in ["readiness", "launch", "health", "node-health"] {
        let name = format!("my-{world}-py");
        let project = dir.path().join(&name);
        let out = run(orchestrator_test_support::without_repository(&copy)
            .args(["plugin", "new", world, &name, "--lang", "python", "--dir"])
            .arg(&project)
            .env("ORCHESTRATOR_PLUGIN_CACHE_DIR", &cache));
        assert!(out.status.success(), "{}", text(&out));
        let requirements = std::fs::read_to_string(project.join("requirements.txt")).unwrap();
        assert_eq!(requirements, "componentize-py==0.25.1\n");
        let module = format!("{}.py", name.replace('-', "_"));
        let wasm = project.join(format!("{}.wasm", name.replace('-', "_")));
        let sdk = project.join("sdk/policy-sdk");
        let out = run(
            orchestrator_test_support::without_repository(Path::new(&python()))
                .args([
                    "-c",
                    "import orchestrator_policy; print(orchestrator_policy.__file__)",
                ])
                .env("PYTHONPATH", &sdk),
        );
        assert!(
            text(&out).starts_with(&*sdk.to_string_lossy()),
            "the project's SDK is the one imported: {}",
            text(&out)
        );
        let out = run(
            orchestrator_test_support::without_repository(Path::new(&python()))
                .args(["-m", "orchestrator_policy.build"])
                .arg(&module)
                .arg("-o")
                .arg(&wasm)
                .env("PYTHONPATH", &sdk)
                .current_dir(&project),
        );
        assert!(out.status.success(), "{world}: {}", text(&out));
        // Health is built at contract 0.3.0, the other worlds at 0.2.0.
        let out = orchestrator(&["plugin", "check", &wasm.display().to_string()], &cache);
        let version = if world == "health" { "0.3.0" } else { "0.2.0" };
        assert!(
            text(&out).contains(&format!("version: {version}")),
            "{world}: {}",
            text(&out)
        );
        let out = orchestrator(
            &[
                "plugin",
                "test",
                &wasm.display().to_string(),
                &project.join("cases").display().to_string(),
            ],
            &cache,
        );
        assert!(out.status.success(), "{world}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("2 passed, 0 failed\n"),
            "{world}: {}",
            text(&out)
        );
    }
}
