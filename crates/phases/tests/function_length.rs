//! No function of the library crates runs over [`LIMIT`] lines, except the
//! ones listed in [`LONGER_TODAY`] (each to be split; the list may only
//! shrink: a listed function that fits fails the test too, so the entry
//! is removed). `cargo test -p orchestrator-phases --test function_length
//! -- --nocapture` prints the longest functions.
//!
//! The scan is textual: a `fn` line, its body to the closing brace at the
//! same indentation; `#[cfg(test)]` modules and everything after them are
//! not scanned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::rust_files;
use std::path::Path;

/// The longest a function may be, in lines, signature and braces included.
const LIMIT: usize = 100;

/// Functions over the limit today: `crate-dir/path:function`.
const LONGER_TODAY: &[&str] = &[];

/// Crates that are not the library: the binary, the build tools, test
/// doubles and test support.
const NOT_LIBRARY: &[&str] = &[
    "orchestrator",
    "xtask",
    "test-support",
    "test-plugins",
    "fake-gcs",
    "fake-kube-api",
    "nvml-standin",
    "guest-build",
];

/// The name of the function a line declares, if it declares one.
fn declared(line: &str) -> Option<&str> {
    let rest = line.trim_start();
    let rest = rest
        .strip_prefix("pub(crate) ")
        .or_else(|| rest.strip_prefix("pub(super) "))
        .or_else(|| rest.strip_prefix("pub "))
        .unwrap_or(rest);
    let rest = rest.strip_prefix("async ").unwrap_or(rest);
    let rest = rest.strip_prefix("const ").unwrap_or(rest);
    let rest = rest.strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&rest[..end])
}

/// Every function of `text` with its length in lines.
fn lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let Some(name) = declared(lines[i]) else {
            i += 1;
            continue;
        };
        let indent = &lines[i][..lines[i].len() - lines[i].trim_start().len()];
        // The body opens on the first line ending in `{`; a `;` first is a
        // declaration without a body (a trait's).
        let mut j = i;
        while j < lines.len() && !lines[j].trim_end().ends_with('{') {
            if lines[j].trim_end().ends_with(';') {
                break;
            }
            j += 1;
        }
        if j >= lines.len() || lines[j].trim_end().ends_with(';') {
            i = j + 1;
            continue;
        }
        let close = format!("{indent}}}");
        let mut k = j + 1;
        while k < lines.len() && lines[k] != close {
            k += 1;
        }
        found.push((name.to_string(), k - i + 1));
        i = k + 1;
    }
    found
}

#[test]
fn no_library_function_is_longer_than_the_limit() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if NOT_LIBRARY.contains(&name.as_str()) || !dir.join("src").is_dir() {
            continue;
        }
        rust_files(&dir.join("src"), &mut files);
    }
    let mut all = Vec::new();
    for file in files {
        let label = file
            .strip_prefix(&crates)
            .unwrap()
            .to_string_lossy()
            .to_string();
        for (name, n) in lengths(&std::fs::read_to_string(&file).unwrap()) {
            all.push((n, format!("{label}:{name}")));
        }
    }
    all.sort_unstable_by(|a, b| b.cmp(a));
    for (n, f) in all.iter().take(15) {
        println!("{n:5} {f}");
    }
    let over: Vec<&str> = all
        .iter()
        .filter(|(n, _)| *n > LIMIT)
        .map(|(_, f)| f.as_str())
        .collect();
    let new: Vec<&&str> = over.iter().filter(|f| !LONGER_TODAY.contains(f)).collect();
    assert!(
        new.is_empty(),
        "over {LIMIT} lines: {new:?}; split them (see the list printed with --nocapture)"
    );
    let fit: Vec<&&str> = LONGER_TODAY.iter().filter(|f| !over.contains(f)).collect();
    assert!(
        fit.is_empty(),
        "{fit:?} fit in {LIMIT} lines now: remove them from LONGER_TODAY"
    );
}

#[test]
fn the_scan_measures_a_function_from_its_signature_to_its_brace() {
    let text = "fn short() {\n    1;\n}\n\npub async fn long(\n    a: u8,\n) -> u8 {\n    a\n}\ntrait T {\n    fn declared(&self);\n}\n#[cfg(test)]\nfn ignored() {\n}\n";
    assert_eq!(
        lengths(text),
        vec![("short".to_string(), 3), ("long".to_string(), 5)]
    );
}
