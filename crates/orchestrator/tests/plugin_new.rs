//! `orchestrator plugin new` as a new author uses it: each world's
//! project, written by a copy of the binary on a machine without this
//! repository (an empty tmpfs mounted over the checkout), builds offline
//! for wasm32-wasip2 from its own `Cargo.toml` (the SDK and WIT the binary
//! carries, in the project's `sdk/`; the versions of its `Cargo.lock`;
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

/// `orchestrator ARGS` from a copy of the binary at `copy`, with the
/// repository out of reach.
fn orchestrator_alone(copy: &Path, args: &[&str]) -> Output {
    orchestrator_test_support::output_within(
        orchestrator_test_support::without_repository(copy)
            .args(args)
            .env("ORCHESTRATOR_PLUGIN_NO_CACHE", "true"),
        Duration::from_secs(120),
    )
}

/// The (name, version) of every package of a lock file.
fn locked(lock: &str) -> std::collections::BTreeSet<(String, String)> {
    lock.split("[[package]]")
        .filter_map(|p| {
            let field = |key: &str| {
                p.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            Some((field("name")?, field("version")?))
        })
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cargo build --offline --target wasm32-wasip2 --release` in `project`,
/// as an author runs it, with the repository out of reach: none of this
/// test run's cargo settings leak in.
fn build(project: &Path, target: &Path) -> Output {
    let mut cmd = orchestrator_test_support::without_repository(Path::new(env!("CARGO")));
    cmd.args([
        "build",
        "--offline",
        "--target",
        "wasm32-wasip2",
        "--release",
    ])
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
    let copy = dir.path().join("orchestrator");
    std::fs::copy(env!("CARGO_BIN_EXE_orchestrator"), &copy).unwrap();
    // One target dir for the five projects, outside the repository, so
    // the SDK is compiled once.
    let target = dir.path().join("target");
    let repository = orchestrator_test_support::repository_root();
    for world in ["readiness", "launch", "health", "node-health", "scale"] {
        let name = format!("my-{world}-policy");
        let project = dir.path().join(&name);
        let out = orchestrator_alone(
            &copy,
            &[
                "plugin",
                "new",
                world,
                &name,
                "--dir",
                &project.display().to_string(),
            ],
        );
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
        assert!(
            manifest.contains("orchestrator-plugin-sdk = { path = \"sdk/crates/plugin-sdk\" }")
                && !manifest.contains(&*repository.to_string_lossy()),
            "the SDK written into the project: {manifest}"
        );
        let lock = std::fs::read_to_string(project.join("Cargo.lock")).unwrap();
        assert!(
            locked(&lock).contains(&("wit-bindgen".to_string(), "0.63.0".to_string())),
            "{lock}"
        );

        let built = build(&project, &target);
        assert!(built.status.success(), "{world}: {}", text(&built));
        // The versions built are the ones the lock pinned.
        let after = std::fs::read_to_string(project.join("Cargo.lock")).unwrap();
        assert_eq!(locked(&after), locked(&lock), "{world}");
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
