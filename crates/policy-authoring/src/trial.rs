//! One call of a policy on a JSON input, as `orchestrator plugin run`
//! makes it: the input parsed as strictly as the host reads it (every
//! field of the WIT record, values that make sense), the answer as JSON.
//! Entry point: [`call`].

use crate::{AuthoringError, invalid};
use orchestrator_domain::{
    ClusterSnapshot, HealthSnapshot, InvalidField, KeyValue, LaunchRequest, NodeReadings,
    ScaleInput,
};
use orchestrator_policy_host::{PluginError, PluginSource, PolicyHost, World};
use serde_json::Value;
use std::path::Path;

/// `KEY=VALUE` parameters, as `--param` gives them.
pub fn parse_params(raw: &[String]) -> Result<Vec<KeyValue>, AuthoringError> {
    raw.iter()
        .map(|p| match KeyValue::parse(p) {
            Some(kv) => Ok(kv),
            None => invalid!("--param {p:?} is not KEY=VALUE; write it like --param nodes=3"),
        })
        .collect()
}

/// The input file's text; `-` reads stdin.
pub fn read_input(path: &Path) -> Result<String, AuthoringError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(AuthoringError::io("read the input from", "stdin"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(AuthoringError::io("read the input file", path))
}

/// A policy input that can say what the types cannot.
trait PolicyInput: serde::de::DeserializeOwned {
    fn check(&self) -> Result<(), InvalidField>;
}

macro_rules! policy_input {
    ($($t:ty),*) => {$(
        impl PolicyInput for $t {
            fn check(&self) -> Result<(), InvalidField> {
                self.validate()
            }
        }
    )*};
}
policy_input!(ClusterSnapshot, LaunchRequest, HealthSnapshot, NodeReadings);

impl PolicyInput for ScaleInput {
    fn check(&self) -> Result<(), InvalidField> {
        self.validate().map_err(|e| InvalidField {
            field: "samples".into(),
            problem: e.to_string(),
        })
    }
}

/// Parses a policy's input strictly: every field of the WIT record must be
/// present (only `option` fields may be left out), and the values must
/// make sense (no negative GPU count).
fn parse_input<T: PolicyInput>(input: Value, path: &Path, what: &str) -> Result<T, AuthoringError> {
    let value: T = match serde_json::from_value(input) {
        Ok(v) => v,
        Err(e) => invalid!(
            "{} is not a valid {what} ({e}); every field of the WIT record is required, named as in the WIT (kebab-case): see examples/snapshots/",
            path.display()
        ),
    };
    if let Err(e) = value.check() {
        invalid!("{} is not a valid {what}: {e}", path.display());
    }
    Ok(value)
}

/// Calls the `world` policy at `source` on `input` (read from `path`, named
/// in errors) and returns its answer as `plugin run` prints it. The outer
/// error is bad input; the inner one the plugin's failure.
pub fn call(
    host: &PolicyHost,
    source: &PluginSource,
    world: World,
    input: Value,
    params: &[KeyValue],
    path: &Path,
) -> Result<Result<Value, PluginError>, AuthoringError> {
    let answer = match world {
        World::Readiness => {
            let snapshot: ClusterSnapshot = parse_input(input, path, "cluster-snapshot")?;
            host.readiness(source)
                .and_then(|mut p| p.check(&snapshot, params))
                .map(serde_json::to_value)
        }
        World::Launch => {
            let request: LaunchRequest = parse_input(input, path, "launch-request")?;
            host.launch(source)
                .and_then(|mut p| p.plan(&request, params))
                .map(|r| match r {
                    Ok(plan) => serde_json::to_value(serde_json::json!({ "plan": plan })),
                    Err(e) => serde_json::to_value(serde_json::json!({ "error": e })),
                })
        }
        World::Health => {
            let snapshot: HealthSnapshot = parse_input(input, path, "health-snapshot")?;
            host.health(source)
                .and_then(|mut p| p.evaluate(&snapshot, params))
                .map(serde_json::to_value)
        }
        World::NodeHealth => {
            let readings: NodeReadings = parse_input(input, path, "node-readings")?;
            host.node_health(source)
                .and_then(|mut p| p.judge(&readings, params))
                .map(serde_json::to_value)
        }
        World::Scale => {
            let scale: ScaleInput = parse_input(input, path, "scale-input")?;
            host.scale(source)
                .and_then(|mut p| p.recommend(&scale, params))
                .map(serde_json::to_value)
        }
    };
    match answer {
        Ok(value) => Ok(Ok(value?)),
        Err(e) => Ok(Err(e)),
    }
}
