//! Fixture cases for a policy (`orchestrator plugin test PLUGIN CASES`), in
//! a policy repository's CI. Entry point: [`run_cases`].
//!
//! A case is one `*.json` file in the CASES directory (run in name order):
//!
//! ```json
//! {
//!   "description": "two of three nodes: keep waiting",
//!   "input": "../snapshots/readiness-missing-worker.json",
//!   "params": { "nodes": 3 },
//!   "expect": { "wait": "2 of 3 nodes alive" }
//! }
//! ```
//!
//! `input` is the world's input (a cluster snapshot, launch request, health
//! snapshot or node readings, as `plugin run` takes it), inline or as the
//! path of a JSON file relative to the case. `params` are the policy's
//! parameters (strings, numbers or booleans). `expect` is the answer as
//! `plugin run` prints it; an object matches when every field it names
//! matches (so a case may leave out what it does not care about), anything
//! else when equal. Each case prints one line, then `N passed, N failed`;
//! the exit code is 0 when all pass, 1 when one fails (a wrong answer, or a
//! plugin call that traps or runs out of time), 2 on bad input (no cases,
//! a case that does not parse, an input the world cannot read, a plugin
//! that does not load).

use crate::{AuthoringError, invalid};
use orchestrator_domain::KeyValue;
use orchestrator_policy_host::{PluginSource, PolicyHost};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Result<T, E = AuthoringError> = std::result::Result<T, E>;

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case is about, for people.
    #[serde(default)]
    description: Option<String>,
    /// The input, or the path of a JSON file holding it.
    input: Value,
    /// The policy's parameters.
    #[serde(default)]
    params: BTreeMap<String, Value>,
    /// The expected answer.
    expect: Value,
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResult {
    /// The answer was the one expected.
    Passed,
    /// It was not, or the plugin failed: why.
    Failed(String),
}

/// One case run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case file's name.
    pub name: String,
    /// Its description, if it has one.
    pub description: Option<String>,
    /// How it ended.
    pub result: CaseResult,
}

/// Every case of a directory, run: one line per case, then
/// `N passed, N failed`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CasesReport {
    /// In the order run (file name order).
    pub cases: Vec<CaseOutcome>,
}

impl CasesReport {
    /// How many failed.
    pub fn failed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.result != CaseResult::Passed)
            .count()
    }
}

impl std::fmt::Display for CasesReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for case in &self.cases {
            let about = case
                .description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            match &case.result {
                CaseResult::Passed => writeln!(f, "ok    {}{about}", case.name)?,
                CaseResult::Failed(why) => writeln!(f, "FAIL  {}{about}: {why}", case.name)?,
            }
        }
        let failed = self.failed();
        writeln!(f, "{} passed, {failed} failed", self.cases.len() - failed)
    }
}

/// Runs every case of the directory `cases` through the policy at
/// `source`. Every case is parsed before any runs: bad input is an error,
/// a wrong answer or a failing call a failed case.
pub fn run_cases(host: &PolicyHost, source: &PluginSource, cases: &Path) -> Result<CasesReport> {
    let files = case_files(cases)?;
    let world = host.inspect(source)?.world;
    let mut parsed = Vec::with_capacity(files.len());
    for file in &files {
        parsed.push((file, read_case(file)?));
    }
    let mut report = CasesReport::default();
    for (file, (case, input, params)) in parsed {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = match crate::trial::call(host, source, world, input, &params, file)? {
            Ok(answer) => compare(&case.expect, &answer),
            Err(e) => CaseResult::Failed(format!("the plugin failed: {e}")),
        };
        report.cases.push(CaseOutcome {
            name,
            description: case.description,
            result,
        });
    }
    Ok(report)
}

/// The `*.json` files of `dir`, in name order; at least one.
fn case_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        invalid!(
            "cannot read the cases directory {}: give a directory of *.json case files",
            dir.display()
        );
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        invalid!(
            "{} holds no *.json case files; each case is {{\"input\": ..., \"params\": {{...}}, \"expect\": ...}}",
            dir.display()
        );
    }
    Ok(files)
}

/// A case, its input and its parameters.
fn read_case(file: &Path) -> Result<(Case, Value, Vec<KeyValue>)> {
    let text = std::fs::read_to_string(file).map_err(AuthoringError::io("read the case", file))?;
    let case: Case = match serde_json::from_str(&text) {
        Ok(case) => case,
        Err(e) => invalid!(
            "{} is not a case ({e}); write {{\"input\": ..., \"params\": {{...}}, \"expect\": ...}}",
            file.display()
        ),
    };
    let input = match &case.input {
        Value::String(path) => {
            let at = file.parent().unwrap_or(Path::new(".")).join(path);
            let Ok(text) = std::fs::read_to_string(&at) else {
                invalid!("{}: cannot read its input {}", file.display(), at.display());
            };
            match serde_json::from_str(&text) {
                Ok(input) => input,
                Err(e) => invalid!(
                    "{}: its input {} is not JSON ({e})",
                    file.display(),
                    at.display()
                ),
            }
        }
        inline => inline.clone(),
    };
    let mut params = Vec::with_capacity(case.params.len());
    for (key, value) in &case.params {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => invalid!(
                "{}: parameter {key:?} is {other}; parameters are strings, numbers or booleans",
                file.display()
            ),
        };
        params.push(KeyValue::new(key, value));
    }
    Ok((case, input, params))
}

/// Whether `got` is what `expected` says: objects by the fields `expected`
/// names, the rest by equality. The failure names the first difference.
fn compare(expected: &Value, got: &Value) -> CaseResult {
    match first_difference(expected, got, "") {
        None => CaseResult::Passed,
        Some(at) => CaseResult::Failed(format!(
            "at {}: expected {}, got {}",
            if at.0.is_empty() { "/" } else { &at.0 },
            at.1,
            at.2
        )),
    }
}

fn first_difference(expected: &Value, got: &Value, at: &str) -> Option<(String, Value, Value)> {
    match (expected, got) {
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(k, v)| {
            let path = format!("{at}/{k}");
            match have.get(k) {
                Some(h) => first_difference(v, h, &path),
                None => Some((path, v.clone(), Value::String("(missing)".into()))),
            }
        }),
        (a, b) if a == b => None,
        (a, b) => Some((at.to_string(), a.clone(), b.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_match_by_the_fields_the_case_names() {
        let got = json!({"plan": {"argv": ["vllm", "serve"], "early": true}});
        assert_eq!(
            compare(&json!({"plan": {"early": true}}), &got),
            CaseResult::Passed
        );
        assert_eq!(
            compare(&json!({"plan": {"early": false}}), &got),
            CaseResult::Failed("at /plan/early: expected false, got true".into())
        );
        assert_eq!(
            compare(&json!({"error": "x"}), &got),
            CaseResult::Failed("at /error: expected \"x\", got \"(missing)\"".into())
        );
        // Arrays and scalars are equal or not.
        assert!(matches!(
            compare(&json!({"plan": {"argv": ["vllm"]}}), &got),
            CaseResult::Failed(_)
        ));
        assert_eq!(
            compare(&json!("ready"), &json!("ready")),
            CaseResult::Passed
        );
    }
}
