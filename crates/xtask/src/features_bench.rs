//! `cargo xtask bench features`: what asking the heavy dependencies for
//! only the features this workspace uses saves in compile time. Entry
//! point: [`bench`].
//!
//! Each case is a scratch crate that depends on the dependency, built
//! twice in empty target folders of its own (`cargo build --release`, the
//! crates' sources already fetched): once with the dependency's default
//! features (the old way) and once with the features the workspace asks.
//! Both builds use this workspace's `Cargo.lock`, so the versions are the
//! same; the figures are wall seconds and the number of crates compiled.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A dependency: its name in the BENCH line, and its `[dependencies]`
/// lines with the default features and with the workspace's.
struct Case {
    name: &'static str,
    default: &'static str,
    ours: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "wasmtime",
        default: "wasmtime = \"=48.0.8\"\nwasmtime-wasi = \"=48.0.8\"\n",
        ours: "wasmtime = { version = \"=48.0.8\", default-features = false, features = [\"runtime\", \"cranelift\", \"component-model\", \"std\", \"anyhow\"] }\nwasmtime-wasi = { version = \"=48.0.8\", default-features = false, features = [\"p2\"] }\n",
    },
    Case {
        name: "tonic",
        default: "tonic = \"0.14\"\n",
        ours: "tonic = { version = \"0.14\", default-features = false, features = [\"transport\", \"codegen\"] }\n",
    },
    Case {
        name: "kube",
        default: "kube = \"5.0.0\"\nk8s-openapi = { version = \"0.29.0\", features = [\"v1_33\"] }\n",
        ours: "kube = { version = \"5.0.0\", default-features = false, features = [\"client\", \"runtime\", \"rustls-tls\", \"ring\"] }\nk8s-openapi = { version = \"0.29.0\", default-features = false, features = [\"std\", \"v1_33\"] }\n",
    },
];

/// Builds the scratch crate with `dependencies` in `dir` from nothing:
/// seconds and crates compiled.
fn build(cargo: &mut Command, dir: &Path, dependencies: &str, lock: &Path) -> Result<(f64, usize)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"features-bench\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\n{dependencies}\n[workspace]\n"
        ),
    )?;
    std::fs::write(
        dir.join("src/lib.rs"),
        "//! Scratch crate of `bench features`.\n",
    )?;
    std::fs::copy(lock, dir.join("Cargo.lock"))?;
    let start = Instant::now();
    let output = cargo
        .args(["build", "--release"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .context("cannot run cargo build")?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("the scratch build in {} failed:\n{stderr}", dir.display());
    }
    let crates = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("Compiling "))
        .count();
    Ok((seconds, crates))
}

/// Runs every case, the default features first, and prints the figures
/// and the BENCH line.
pub(crate) fn bench(mut cargo: impl FnMut() -> Command, root: &Path) -> Result<()> {
    let lock = root.join("Cargo.lock");
    let scratch = root.join("target/bench-features");
    let mut fields = Vec::new();
    for case in CASES {
        eprintln!(
            "\n==> {}: default features, then the workspace's",
            case.name
        );
        let (default_s, default_crates) = build(
            &mut cargo(),
            &scratch.join(format!("{}-default", case.name)),
            case.default,
            &lock,
        )?;
        let (ours_s, ours_crates) = build(
            &mut cargo(),
            &scratch.join(format!("{}-ours", case.name)),
            case.ours,
            &lock,
        )?;
        eprintln!(
            "    default features: {default_s:.1} s, {default_crates} crates; the workspace's: {ours_s:.1} s, {ours_crates} crates"
        );
        fields.push(format!(
            "{name}_s={ours_s:.1} old_{name}_s={default_s:.1} {name}_crates={ours_crates} old_{name}_crates={default_crates}",
            name = case.name
        ));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("BENCH features {}", fields.join(" "));
    Ok(())
}
