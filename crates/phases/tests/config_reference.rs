//! The configuration reference (`docs/configuration.md`) documents every
//! key of the configuration types: each key of `Config::default()`, as
//! TOML spells it, has a row `` | `section.key` | ``, and every row names a
//! key that exists. A new field without a row fails here, with the rows to
//! add (their defaults filled in) printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use orchestrator_phases::config::Config;
use std::collections::BTreeMap;

/// Every key below `value`, dotted, with its default shown as TOML would
/// (a table of keys is descended into; an empty table, a list or a
/// missing value is one key).
fn keys(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let dotted = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                keys(&dotted, inner, out);
            }
        }
        other => {
            let shown = match other {
                serde_json::Value::Null => "(none)".to_string(),
                serde_json::Value::Object(_) => "{}".to_string(),
                v => v.to_string(),
            };
            out.insert(prefix.to_string(), shown);
        }
    }
}

/// The keys the reference documents: the first cell of each table row,
/// when it is one code span.
fn documented(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_string()))
        .filter(|key| !key.contains(' '))
        .collect()
}

#[test]
fn every_configuration_key_is_in_the_reference() {
    let value = serde_json::to_value(Config::default()).unwrap();
    let mut all = BTreeMap::new();
    keys("", &value, &mut all);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let rows = documented(&text);
    let missing: Vec<String> = all
        .iter()
        .filter(|(key, _)| !rows.contains(key))
        .map(|(key, default)| format!("| `{key}` | `{default}` |  |  |"))
        .collect();
    // A key under an optional table (none by default) is documented by its
    // full name: it counts when its table is a key.
    let unknown: Vec<&String> = rows
        .iter()
        .filter(|row| {
            !all.contains_key(*row)
                && !all.iter().any(|(key, default)| {
                    default == "(none)" && row.starts_with(&format!("{key}."))
                })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys (rows to add, defaults filled in):\n{}",
        missing.join("\n")
    );
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys the configuration does not have: {unknown:?}"
    );
}

#[test]
fn keys_are_dotted_and_rows_are_read() {
    let mut out = BTreeMap::new();
    keys(
        "",
        &serde_json::json!({"a": {"b": 1, "c": {}, "d": null, "e": [1]}}),
        &mut out,
    );
    assert_eq!(out["a.b"], "1");
    assert_eq!(out["a.c"], "{}");
    assert_eq!(out["a.d"], "(none)");
    assert_eq!(out["a.e"], "[1]");
    assert_eq!(
        documented("| key | default |\n|---|---|\n| `a.b` | `1` | x |\n| `not a key` | |\n"),
        vec!["a.b"]
    );
}
