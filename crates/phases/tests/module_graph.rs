//! The phases crate's top modules and who names whom (`crate::X` in a
//! module's code, not its comments or tests), checked for circles: a
//! module in a circle cannot be read, tested or replaced without the
//! others. The test fails when a module joins a circle, and prints the
//! graph (`cargo test -p orchestrator-phases --test module_graph --
//! --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_test_support::rust_files;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules allowed in an import circle: none (on 2026-12-06 twelve of the
/// fifteen were in one; configuration types moved under `config/`,
/// `Status` records domain types, the HTTP probe is a module of its own).
const IN_A_CIRCLE_TODAY: &[&str] = &[];

/// Top module -> the top modules its files name.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let top = |p: &Path| -> Option<String> {
        let first = p.strip_prefix(&src).ok()?.components().next()?;
        let name = first
            .as_os_str()
            .to_str()?
            .trim_end_matches(".rs")
            .to_string();
        (name != "lib").then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = top(file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        // Code only: tests inside a module may name anything, and a doc
        // link is no dependency.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = edges.entry(from.clone()).or_default();
        for to in &modules {
            if *to != from
                && (code.contains(&format!("crate::{to}::"))
                    || code.contains(&format!("crate::{to};"))
                    || code.contains(&format!("crate::{to}}}"))
                    || code.contains(&format!("crate::{{{to}")))
            {
                entry.insert(to.clone());
            }
        }
    }
    edges
}

/// Strongly connected components of more than one module (Tarjan's).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        found: vec![],
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_joins_an_import_circle() {
    let edges = graph();
    for (from, to) in &edges {
        println!(
            "{from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let found = circles(&edges);
    for c in &found {
        println!(
            "circle: {}",
            c.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let allowed: BTreeSet<&str> = IN_A_CIRCLE_TODAY.iter().copied().collect();
    let joined: Vec<&String> = found
        .iter()
        .flatten()
        .filter(|m| !allowed.contains(m.as_str()))
        .collect();
    assert!(
        joined.is_empty(),
        "modules in an import circle that were not before: {joined:?}; break the circle (move the shared type down, to the domain crate or a lower module)"
    );
    let in_circles: BTreeSet<&str> = found.iter().flatten().map(String::as_str).collect();
    let left: Vec<&&str> = allowed
        .iter()
        .filter(|m| !in_circles.contains(**m))
        .collect();
    assert!(
        left.is_empty(),
        "{left:?} left every circle: take them out of IN_A_CIRCLE_TODAY so they stay out"
    );
}

#[test]
fn the_circle_finder_finds_circles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut edge = |a: &str, b: &str| {
        edges.entry(a.into()).or_default().insert(b.into());
    };
    edge("a", "b");
    edge("b", "c");
    edge("c", "a");
    edge("c", "d");
    edge("d", "e");
    let found = circles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}
