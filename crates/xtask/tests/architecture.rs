//! The rules of which crate may depend on which (`docs/architecture.md`,
//! "Rules"): every workspace crate has a layer, and a crate's
//! `[dependencies]` name only workspace crates of lower layers (a layer's
//! crates do not depend on each other). The vocabulary (`domain`) and the
//! transports at the bottom; the binary and the test support on top.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

/// Each crate folder's layer.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("weights", 0),
    ("oci", 0),
    ("guest-build", 0),
    ("plugin-sdk", 0),
    ("builtin-plugins", 0),
    ("nvml-standin", 0),
    ("fake-kube-api", 0),
    ("test-plugins", 0),
    ("ray-gcs", 1),
    ("kubernetes", 1),
    ("node-probe", 1),
    ("policy-host", 1),
    ("phases", 2),
    ("policy-authoring", 2),
    ("fake-gcs", 2),
    ("orchestrator", 3),
    ("test-support", 3),
    ("xtask", 4),
];

/// The workspace crates a manifest's `[dependencies]` name, by package
/// name (`orchestrator-x` or `x`).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once('=') {
            out.push(name.trim().to_string());
        }
    }
    out
}

#[test]
fn every_crate_depends_only_on_lower_layers() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut found = Vec::new();
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let folder = entry.file_name().to_string_lossy().into_owned();
        found.push(folder.clone());
        let Some(&mine) = layers.get(folder.as_str()) else {
            wrong.push(format!("crates/{folder} has no layer in LAYERS: give it one (and a line in docs/architecture.md)"));
            continue;
        };
        for dependency in dependencies(&text) {
            let short = dependency
                .strip_prefix("orchestrator-")
                .unwrap_or(&dependency);
            if let Some(&theirs) = layers.get(short)
                && theirs >= mine
            {
                wrong.push(format!(
                    "crates/{folder} (layer {mine}) depends on {dependency} (layer {theirs})"
                ));
            }
        }
        if folder == "ray-gcs" && text.contains("wasmtime") {
            wrong.push("crates/ray-gcs must not depend on wasmtime".into());
        }
    }
    assert!(found.len() >= LAYERS.len() - 1, "crates found: {found:?}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn dependencies_are_read_from_the_dependencies_table_only() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\norchestrator-domain = { workspace = true }\nserde = \"1\"\n[dev-dependencies]\norchestrator-test-support = { workspace = true }\n";
    assert_eq!(dependencies(manifest), vec!["orchestrator-domain", "serde"]);
}
