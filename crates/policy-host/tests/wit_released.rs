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
