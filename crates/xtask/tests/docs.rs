//! The documentation holds together: the README fits on a screen (at most
//! 200 lines), and every relative link of the README and `docs/` (and the
//! other READMEs of the tree) names a file that exists and, for a Markdown
//! file, a heading it has (GitHub's anchors).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every Markdown file whose links are checked.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for dir in [
        "docs",
        "deploy",
        "examples/accelerator-readiness",
        "examples/accelerator-readiness-python",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The lines of `text` outside fenced code blocks (the fences left out).
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fence = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            fence = !fence;
            return false;
        }
        !fence
    })
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`; repeats get `-1`, `-2`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut out = HashSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = line[hashes..]
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        };
        *count += 1;
        out.insert(anchor);
    }
    out
}

/// The targets of `[text](target)` links outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            let target = &after[..end];
            // Not inside an inline code span (an odd number of backticks
            // before it on the line).
            let before = &line[..line.len() - rest.len() + at];
            if before.matches('`').count() % 2 == 0 && !target.contains(' ') {
                out.push(target.to_string());
            }
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn the_readme_fits_on_a_screen() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines: keep it at most 200 and move the rest to docs/"
    );
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut cache: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    let mut anchors_of = |path: &Path| -> HashSet<String> {
        cache
            .entry(path.to_path_buf())
            .or_insert_with(|| anchors(&std::fs::read_to_string(path).unwrap_or_default()))
            .clone()
    };
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap().to_path_buf();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                dir.join(path)
            };
            let name = doc
                .strip_prefix(root())
                .unwrap_or(&doc)
                .display()
                .to_string();
            if !file.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            if !anchor.is_empty()
                && file.extension().is_some_and(|e| e == "md")
                && !anchors_of(&file).contains(anchor)
            {
                broken.push(format!("{name}: {target} (no such heading)"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchor_of_a_heading_is_githubs() {
    let a = anchors(
        "# A b\n## The native backend: vLLM's own mode, without Ray\n```\n# not\n```\n## A b\n",
    );
    assert!(a.contains("a-b") && a.contains("a-b-1"));
    assert!(a.contains("the-native-backend-vllms-own-mode-without-ray"));
    assert!(!a.contains("not"));
    assert_eq!(
        links("see [x](a.md#b) and `[y](z)` [w](c.md)"),
        vec!["a.md#b", "c.md"]
    );
}
