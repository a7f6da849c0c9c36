//! The SDKs carried inside the binary, so that `orchestrator plugin new`
//! writes a project that builds without this repository anywhere: the
//! Rust SDK crate and the Python SDK package, each with the WIT packages it
//! is generated from, and a `Cargo.lock` pinned to the versions this
//! orchestrator was built and tested with (so `cargo build --offline`
//! finds them in a cargo cache that has built the orchestrator). Entry
//! points: [`rust_files`], [`python_files`], [`cargo_lock`].
//!
//! The files are laid out as in the repository, under the project's
//! `sdk/` folder: `sdk/crates/plugin-sdk` finds its WIT at `../../wit`,
//! exactly as in the checkout.

/// A file of an SDK: its path under the project's `sdk/` folder, and its
/// text.
pub(crate) type SdkFile = (&'static str, &'static str);

/// The WIT packages both SDKs are generated from (`deps/` of 0.3.0 holds
/// 0.2.0, which it imports; in the repository that is a link).
macro_rules! wit_files {
    ($prefix:literal) => {
        [
            (
                concat!($prefix, "policy-0.2.0/policies.wit"),
                include_str!("../../../wit/policy-0.2.0/policies.wit"),
            ),
            (
                concat!($prefix, "policy-0.2.0/types.wit"),
                include_str!("../../../wit/policy-0.2.0/types.wit"),
            ),
            (
                concat!($prefix, "policy-0.3.0/policies.wit"),
                include_str!("../../../wit/policy-0.3.0/policies.wit"),
            ),
            (
                concat!($prefix, "policy-0.3.0/deps/policy-0.2.0/policies.wit"),
                include_str!("../../../wit/policy-0.2.0/policies.wit"),
            ),
            (
                concat!($prefix, "policy-0.3.0/deps/policy-0.2.0/types.wit"),
                include_str!("../../../wit/policy-0.2.0/types.wit"),
            ),
        ]
    };
}

const RUST_SDK: [SdkFile; 5] = [
    (
        "crates/plugin-sdk/Cargo.toml",
        include_str!("../../plugin-sdk/Cargo.toml"),
    ),
    (
        "crates/plugin-sdk/README.md",
        include_str!("../../plugin-sdk/README.md"),
    ),
    (
        "crates/plugin-sdk/src/lib.rs",
        include_str!("../../plugin-sdk/src/lib.rs"),
    ),
    (
        "crates/plugin-sdk/src/cluster.rs",
        include_str!("../../plugin-sdk/src/cluster.rs"),
    ),
    (
        "crates/plugin-sdk/src/params.rs",
        include_str!("../../plugin-sdk/src/params.rs"),
    ),
];

const RUST_WIT: [SdkFile; 5] = wit_files!("wit/");

const PYTHON_SDK: [SdkFile; 10] = [
    (
        "policy-sdk/pyproject.toml",
        include_str!("../../../python/policy-sdk/pyproject.toml"),
    ),
    (
        "policy-sdk/README.md",
        include_str!("../../../python/policy-sdk/README.md"),
    ),
    (
        "policy-sdk/orchestrator_policy/__init__.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/__init__.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/_common.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/_common.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/build.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/build.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/health.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/health.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/launch.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/launch.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/node_health.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/node_health.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/readiness.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/readiness.py"),
    ),
    (
        "policy-sdk/orchestrator_policy/scale.py",
        include_str!("../../../python/policy-sdk/orchestrator_policy/scale.py"),
    ),
];

const PYTHON_WIT: [SdkFile; 5] = wit_files!("policy-sdk/orchestrator_policy/wit/");

/// The Rust SDK and its WIT, paths under `sdk/`.
pub(crate) fn rust_files() -> impl Iterator<Item = SdkFile> {
    RUST_SDK.into_iter().chain(RUST_WIT)
}

/// The Python SDK with its WIT inside the package, paths under `sdk/`.
pub(crate) fn python_files() -> impl Iterator<Item = SdkFile> {
    PYTHON_SDK.into_iter().chain(PYTHON_WIT)
}

/// The workspace's lock file, which pins the SDK's dependencies.
const WORKSPACE_LOCK: &str = include_str!("../../../Cargo.lock");

/// The SDK's package name in the lock.
const SDK_PACKAGE: &str = "orchestrator-plugin-sdk";

/// One `[[package]]` of a lock file: its name, version and the text of
/// its entry.
struct LockedPackage<'a> {
    name: &'a str,
    version: &'a str,
    dependencies: Vec<(&'a str, Option<&'a str>)>,
    text: &'a str,
}

fn quoted<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.strip_prefix(key)?
        .strip_prefix(" = \"")?
        .strip_suffix('"')
}

fn parse_package(text: &str) -> Option<LockedPackage<'_>> {
    let mut name = None;
    let mut version = None;
    let mut dependencies = Vec::new();
    let mut in_dependencies = false;
    for line in text.lines() {
        if in_dependencies {
            if line == "]" {
                in_dependencies = false;
            } else if let Some(entry) = line.trim().strip_prefix('"') {
                let entry = entry.trim_end_matches(',').trim_end_matches('"');
                let mut words = entry.split(' ');
                let dep = words.next()?;
                dependencies.push((dep, words.next()));
            }
        } else if line == "dependencies = [" {
            in_dependencies = true;
        } else if let Some(n) = quoted(line, "name") {
            name = Some(n);
        } else if let Some(v) = quoted(line, "version") {
            version = Some(v);
        }
    }
    Some(LockedPackage {
        name: name?,
        version: version?,
        dependencies,
        text,
    })
}

/// A `Cargo.lock` for a policy crate `name` whose one dependency is the
/// SDK: the SDK's dependency closure from this orchestrator's own lock,
/// as cargo writes it (so `cargo build --locked` accepts it as is).
pub(crate) fn cargo_lock(name: &str) -> String {
    let mut parts = WORKSPACE_LOCK.split("\n[[package]]\n");
    let header = parts.next().unwrap_or_default();
    let packages: Vec<LockedPackage<'_>> = parts.filter_map(parse_package).collect();
    // The closure from the SDK, by (name, version).
    let mut kept: Vec<usize> = Vec::new();
    let mut todo: Vec<(&str, Option<&str>)> = vec![(SDK_PACKAGE, None)];
    while let Some((dep, version)) = todo.pop() {
        let found = packages
            .iter()
            .position(|p| p.name == dep && version.is_none_or(|v| p.version == v));
        if let Some(index) = found.filter(|i| !kept.contains(i)) {
            kept.push(index);
            todo.extend(packages[index].dependencies.iter().copied());
        }
    }
    kept.sort_unstable();
    let root = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ndependencies = [\n \"{SDK_PACKAGE}\",\n]\n"
    );
    let mut entries: Vec<(&str, &str, String)> = kept
        .iter()
        .map(|&i| {
            let p = &packages[i];
            // A version in a dependency entry only where the kept set
            // still has several versions of that crate.
            let kept_versions =
                |dep: &str| kept.iter().filter(|&&k| packages[k].name == dep).count();
            let mut text = String::new();
            for line in p.text.lines() {
                let entry = line.trim().strip_prefix('"').map(|e| {
                    e.trim_end_matches(',')
                        .trim_end_matches('"')
                        .split(' ')
                        .collect::<Vec<_>>()
                });
                match entry {
                    Some(words) if line.starts_with(' ') && words.len() >= 2 => {
                        let dep = words[0];
                        if kept_versions(dep) > 1 {
                            text.push_str(line);
                        } else {
                            text.push_str(&format!(" \"{dep}\","));
                        }
                    }
                    _ => text.push_str(line),
                }
                text.push('\n');
            }
            (p.name, p.version, text)
        })
        .collect();
    entries.push((name, "0.1.0", root));
    entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut lock = header.trim_end().to_string();
    lock.push('\n');
    for (_, _, text) in entries {
        lock.push_str("\n[[package]]\n");
        lock.push_str(text.trim_end());
        lock.push('\n');
    }
    lock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every file under `dir` (links followed), relative to `dir`.
    fn files_under(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == "__pycache__" {
                continue;
            }
            let relative = format!("{prefix}{name}");
            if path.is_dir() {
                files_under(&path, &format!("{relative}/"), out);
            } else {
                out.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    /// The carried copies are the repository's files, all of them: a file
    /// added to an SDK or a WIT package fails here until it is carried.
    #[test]
    fn the_carried_sdks_are_the_repositorys() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut expected = Vec::new();
        files_under(
            &repo.join("crates/plugin-sdk"),
            "crates/plugin-sdk/",
            &mut expected,
        );
        for version in ["policy-0.2.0", "policy-0.3.0"] {
            files_under(
                &repo.join("wit").join(version),
                &format!("wit/{version}/"),
                &mut expected,
            );
        }
        let mut carried: Vec<(String, String)> = rust_files()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        expected.sort();
        carried.sort();
        assert_eq!(carried, expected);

        let mut expected = Vec::new();
        files_under(
            &repo.join("python/policy-sdk"),
            "policy-sdk/",
            &mut expected,
        );
        let mut carried: Vec<(String, String)> = python_files()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        expected.sort();
        carried.sort();
        assert_eq!(carried, expected);
    }

    #[test]
    fn the_lock_holds_the_sdks_closure_and_the_policy() {
        let lock = cargo_lock("my-policy");
        assert!(lock.starts_with("# This file is automatically @generated by Cargo."));
        assert!(lock.contains("version = 4\n"));
        assert!(lock.contains(
            "[[package]]\nname = \"my-policy\"\nversion = \"0.1.0\"\ndependencies = [\n \"orchestrator-plugin-sdk\",\n]\n"
        ));
        assert!(lock.contains("name = \"wit-bindgen\"\nversion = \"0.63.0\""));
        // Nothing of the host side.
        for host in ["wasmtime", "tokio", "kube", "orchestrator-phases"] {
            assert!(!lock.contains(&format!("name = \"{host}\"")), "{host}");
        }
        // Every dependency entry names a kept package.
        let packages: Vec<_> = lock
            .split("\n[[package]]\n")
            .skip(1)
            .filter_map(parse_package)
            .collect();
        for p in &packages {
            for (dep, version) in &p.dependencies {
                assert!(
                    packages
                        .iter()
                        .any(|q| q.name == *dep && version.is_none_or(|v| q.version == v)),
                    "{} -> {dep} {version:?}",
                    p.name
                );
            }
        }
    }
}
