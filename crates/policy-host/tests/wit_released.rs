//! A released WIT package never changes: a change is a new version in a new
//! folder. This test pins the digest of every released `wit/<package>-<version>/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sha2::{Digest, Sha256};
use std::path::Path;

/// sha256 over the folder's `.wit` files, in name order: each file's name,
/// a NUL, its bytes, a NUL.
fn digest(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read wit dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wit"))
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for f in files {
        hash.update(f.file_name().expect("name").to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&f).expect("read wit file"));
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[test]
fn released_wit_packages_are_unchanged() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let released = std::fs::read_to_string(wit.join("RELEASED")).expect("wit/RELEASED");
    let mut checked = 0;
    for line in released
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (expected, folder) = line
            .split_once(char::is_whitespace)
            .expect("`<sha256> <folder>`");
        let folder = folder.trim();
        let actual = digest(&wit.join(folder));
        assert_eq!(
            actual, expected,
            "wit/{folder} was released and must not change; put changes in a new version folder \
             (and add its digest to wit/RELEASED when it is released)"
        );
        checked += 1;
    }
    assert!(checked >= 1, "wit/RELEASED lists no package");
}

#[test]
fn print_digests() {
    // `cargo test -p orchestrator-policy-host --test wit_released -- --nocapture print_digests`
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    for entry in std::fs::read_dir(&wit).expect("wit").flatten() {
        if entry.path().is_dir() {
            println!(
                "{} {}",
                digest(&entry.path()),
                entry.file_name().to_string_lossy()
            );
        }
    }
}
