//! `orchestrator plugin new` as a new author uses it: each world's
//! project, written outside this repository (a temp dir), builds for
//! wasm32-wasip2 from its own `Cargo.toml` (the SDK as a path dependency,
//! nothing inherited from a workspace) and passes `orchestrator plugin
//! test` untouched, through the real host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn orchestrator(args: &[&str]) -> Output {
    orchestrator_test_support::output_within(
        Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true"),
        Duration::from_secs(120),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cargo build --target wasm32-wasip2 --release` in `project`, as an
/// author runs it: none of this test run's cargo settings leak in.
fn build(project: &Path, target: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--target", "wasm32-wasip2", "--release"])
        .current_dir(project)
        .env("CARGO_TARGET_DIR", target);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = key == "CARGO_HOME"
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_HTTP_");
        if (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTUP_TOOLCHAIN"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target);
    orchestrator_test_support::output_within(&mut cmd, Duration::from_secs(900))
}

#[test]
fn each_worlds_project_builds_outside_the_repository_and_passes_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    // One target dir for the four projects (and across runs), so the SDK
    // is compiled once.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffolded-policies");
    for world in ["readiness", "launch", "health", "node-health", "scale"] {
        let name = format!("my-{world}-policy");
        let project = dir.path().join(&name);
        let out = orchestrator(&[
            "plugin",
            "new",
            world,
            &name,
            "--dir",
            &project.display().to_string(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("created the {world} policy {name}")),
            "{}",
            text(&out)
        );
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(
            !manifest.contains(".workspace"),
            "nothing inherited: {manifest}"
        );

        let built = build(&project, &target);
        assert!(built.status.success(), "{world}: {}", text(&built));
        let wasm = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let out = orchestrator(&["plugin", "check", &wasm.display().to_string()]);
        assert!(
            text(&out).contains(&format!("world:   {world}")),
            "{}",
            text(&out)
        );
        let out = orchestrator(&[
            "plugin",
            "test",
            &wasm.display().to_string(),
            &project.join("cases").display().to_string(),
        ]);
        assert!(out.status.success(), "{world}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).ends_with("2 passed, 0 failed\n"),
            "{world}: {}",
            text(&out)
        );
    }

    // A second `new` into the same place refuses to overwrite.
    let project = dir.path().join("my-readiness-policy");
    let out = orchestrator(&[
        "plugin",
        "new",
        "readiness",
        "my-readiness-policy",
        "--dir",
        &project.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("exists and is not empty"),
        "{}",
        text(&out)
    );
    // A world that does not exist names the five.
    let out = orchestrator(&["plugin", "new", "autoscale", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("use readiness, launch, health, node-health or scale"),
        "{}",
        text(&out)
    );
}
