//! A released WIT package never changes: a change is a new version in a new
//! folder. This test pins the digest of every released `wit/<package>-<version>/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_guest_build::wit_digest;
use std::path::Path;

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
        let actual = wit_digest(&wit.join(folder)).expect("read the wit folder");
        assert_eq!(
            actual, expected,
            "wit/{folder} was released and must not change; put changes in a new version folder \
             (and add its digest to wit/RELEASED when it is released: `cargo xtask wit-digests` prints it)"
        );
        checked += 1;
    }
    assert!(checked >= 1, "wit/RELEASED lists no package");
}

/// Every package folder is either released (pinned above) or says it is
/// not (an `UNRELEASED` file), so a version cannot ship half-pinned.
#[test]
fn every_wit_package_is_released_or_marked_unreleased() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let released = std::fs::read_to_string(wit.join("RELEASED")).expect("wit/RELEASED");
    let pinned: Vec<&str> = released
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let mut unreleased = 0;
    for entry in std::fs::read_dir(&wit).expect("wit/") {
        let path = entry.expect("entry").path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let marked = path.join("UNRELEASED").exists();
        assert!(
            pinned.contains(&name.as_str()) != marked,
            "wit/{name} must be either pinned in wit/RELEASED or marked with wit/{name}/UNRELEASED (not both)"
        );
        unreleased += usize::from(marked);
    }
    // At most one version is in the making at a time.
    assert!(unreleased <= 1, "{unreleased} versions in the making");
}
