#![warn(unreachable_pub)]
//! Build-script helper that compiles guest crates of this workspace to
//! `wasm32-wasip2` components with a nested `cargo build`, and the one
//! list of those crates ([`BUILTIN_GUESTS`], [`TEST_GUESTS`]) that the
//! build scripts and `cargo xtask` share. Also the digest of a WIT package
//! folder ([`wit_digest`]), which pins released packages.
//!
//! The nested build uses its own target directory (`target/wasm-guests`) so
//! it never waits on the outer build's lock, and a clean environment so the
//! outer build's flags (clippy's wrapper, host RUSTFLAGS) do not leak into
//! the guest build. Every build profile and tool of the host (build, test,
//! clippy) shares the one guest build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in policies (`plugins/`), embedded in the orchestrator.
pub const BUILTIN_GUESTS: &[&str] = &[
    "readiness-node-count",
    "launch-vllm",
    "health-default",
    "node-health-default",
    "scale-default",
];

/// The test guests (`crates/test-plugins/guests/`) and the example policy.
pub const TEST_GUESTS: &[&str] = &[
    "guest-infinite-loop",
    "guest-memory-bomb",
    "guest-panic",
    "guest-sandbox-probe",
    "guest-chatty",
    "guest-wrong-world",
    "guest-wrong-version",
    "guest-hostile-launch",
    "accelerator-readiness",
];

/// Every guest crate: components only, never linked natively.
pub fn all_guests() -> impl Iterator<Item = &'static str> {
    BUILTIN_GUESTS.iter().chain(TEST_GUESTS).copied()
}

/// sha256 over a WIT package folder's `.wit` files, in name order: each
/// file's name, a NUL, its bytes, a NUL. `wit/RELEASED` pins it for every
/// released package.
pub fn wit_digest(dir: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wit"))
        .collect();
    files.sort();
    let mut hash = sha2::Sha256::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        hash.update(name.unwrap_or_default().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&f)?);
        hash.update([0]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// The workspace root, found from the calling build script's manifest dir.
pub fn workspace_root() -> Result<PathBuf, String> {
    let manifest = env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| "CARGO_MANIFEST_DIR is not set: call this from a build script".to_string())?;
    let mut dir = PathBuf::from(manifest);
    loop {
        let candidate = dir.join("Cargo.toml");
        if candidate.is_file() {
            let text = std::fs::read_to_string(&candidate)
                .map_err(|e| format!("cannot read {}: {e}", candidate.display()))?;
            if text.contains("[workspace]") {
                return Ok(dir);
            }
        }
        if !dir.pop() {
            return Err("no workspace Cargo.toml above the build script".to_string());
        }
    }
}

/// Compiles `packages` (package names) to components and returns each
/// `.wasm` path, in the order given. Also tells cargo to rerun the build
/// script when `watch` paths (relative to the workspace root) change.
pub fn build_guests(packages: &[&str], watch: &[&str]) -> Result<Vec<PathBuf>, String> {
    let root = workspace_root()?;
    for path in watch {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let target_dir = env::var_os("ORCHESTRATOR_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("wasm-guests"));
    println!("cargo:rerun-if-env-changed=ORCHESTRATOR_GUEST_TARGET_DIR");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--target-dir")
        .arg(&target_dir);
    for p in packages {
        cmd.arg("--package").arg(p);
    }
    // Leave the outer build's settings behind; keep the jobserver and
    // registry/network settings.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_MAKEFLAGS")
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_HTTP_");
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOCFLAGS"
                    | "CARGO"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if drop {
            cmd.env_remove(key);
        }
    }
    // Nested cargo reports on stderr; keep stdout clean, since a build
    // script's stdout carries instructions to the outer cargo.
    cmd.stdout(std::process::Stdio::null());
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build the guest components: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the guest components {packages:?} for wasm32-wasip2 failed ({status}); \
             if the target is missing run `rustup target add wasm32-wasip2`"
        ));
    }
    Ok(packages.iter().map(|p| artifact(&target_dir, p)).collect())
}

fn artifact(target_dir: &Path, package: &str) -> PathBuf {
    target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}
