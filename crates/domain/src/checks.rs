//! Checks of what crosses a trust boundary and what the types alone cannot
//! say: a policy's input as a user writes it (`orchestrator plugin run`,
//! `plugin test` cases) and a launch policy's answer before anything is
//! printed or executed. Entry points: [`LaunchPlan::validate`] and the
//! `validate` of each input ([`ClusterSnapshot::validate`],
//! [`LaunchRequest::validate`], [`HealthSnapshot::validate`],
//! [`NodeReadings::validate`]).
//!
//! Every refusal is an [`InvalidField`] naming the field by its path in the
//! JSON (`cluster.nodes[1].resources.gpu`, `ranks[0].env[2].key`), so the
//! author finds it at once.

use crate::{
    ClusterSnapshot, HealthSnapshot, KeyValue, LaunchPlan, LaunchRequest, Node, NodeReadings,
    Topology,
};

/// One field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidField {
    /// The field's path in the JSON (kebab-case names, `[i]` for items).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A count of something (GPUs, CPUs, a custom resource): finite, not
/// negative.
fn amount(field: impl FnOnce() -> String, value: f64) -> Result<(), InvalidField> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            field(),
            format!("is {value}; it must be a finite number, 0 or more"),
        ))
    }
}

fn nodes(prefix: &str, nodes: &[Node]) -> Result<(), InvalidField> {
    for (i, node) in nodes.iter().enumerate() {
        let at = |f: &str| format!("{prefix}nodes[{i}].resources.{f}");
        amount(|| at("cpu"), node.resources.cpu)?;
        amount(|| at("gpu"), node.resources.gpu)?;
        for (j, custom) in node.resources.custom.iter().enumerate() {
            amount(|| at(&format!("custom[{j}].amount")), custom.amount)?;
        }
    }
    Ok(())
}

fn topology(prefix: &str, t: &Topology) -> Result<(), InvalidField> {
    amount(|| format!("{prefix}expected.gpus"), t.gpus)?;
    amount(
        || format!("{prefix}expected.min-gpus-per-node"),
        t.min_gpus_per_node,
    )?;
    for (i, g) in t.groups.iter().enumerate() {
        amount(
            || format!("{prefix}expected.groups[{i}].cpus-per-node"),
            g.cpus_per_node,
        )?;
        amount(
            || format!("{prefix}expected.groups[{i}].gpus-per-node"),
            g.gpus_per_node,
        )?;
    }
    Ok(())
}

impl ClusterSnapshot {
    /// Refuses resource counts that no cluster has (negative, NaN,
    /// infinite).
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.validate_at("")
    }

    fn validate_at(&self, prefix: &str) -> Result<(), InvalidField> {
        nodes(prefix, &self.nodes)?;
        topology(prefix, &self.expected)
    }
}

impl LaunchRequest {
    /// The cluster as [`ClusterSnapshot::validate`]; parallel sizes and a
    /// native group of at least 1.
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.cluster.validate_at("cluster.")?;
        let s = &self.settings;
        for (field, size) in [
            ("settings.tensor-parallel-size", s.tensor_parallel_size),
            ("settings.pipeline-parallel-size", s.pipeline_parallel_size),
        ] {
            if size == Some(0) {
                return Err(invalid(field, "is 0; leave it out or give 1 or more"));
            }
        }
        if let Some(group) = &s.native_group
            && group.nodes == 0
        {
            return Err(invalid(
                "settings.native-group.nodes",
                "is 0; a group has at least its leader",
            ));
        }
        Ok(())
    }
}

impl HealthSnapshot {
    /// Refuses impossible resource counts in its nodes.
    pub fn validate(&self) -> Result<(), InvalidField> {
        nodes("", &self.nodes)
    }
}

impl NodeReadings {
    /// Refuses impossible counts and percentages.
    pub fn validate(&self) -> Result<(), InvalidField> {
        amount(|| "advertised-gpus".into(), self.advertised_gpus)?;
        if let Some(p) = self.memory_pressure_percent
            && !(p.is_finite() && (0.0..=100.0).contains(&p))
        {
            return Err(invalid(
                "memory-pressure-percent",
                format!("is {p}; it must be between 0 and 100"),
            ));
        }
        for (i, gpu) in self.gpus.iter().enumerate() {
            if let Some(w) = gpu.power_watts {
                amount(|| format!("gpus[{i}].power-watts"), w)?;
            }
        }
        Ok(())
    }
}

/// Checks one process's argv and environment as `execve` needs them.
fn process(prefix: &str, argv: &[String], env: &[KeyValue]) -> Result<(), InvalidField> {
    match argv.first() {
        None => {
            return Err(invalid(
                format!("{prefix}argv"),
                "is empty; it needs a program",
            ));
        }
        Some(program) if program.is_empty() => {
            return Err(invalid(
                format!("{prefix}argv[0]"),
                "is empty; it must name the program",
            ));
        }
        Some(_) => {}
    }
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            return Err(invalid(
                format!("{prefix}argv[{i}]"),
                "contains a NUL byte, which no process argument can hold",
            ));
        }
    }
    for (i, kv) in env.iter().enumerate() {
        if kv.key.is_empty() {
            return Err(invalid(format!("{prefix}env[{i}].key"), "is empty"));
        }
        if kv.key.contains('=') {
            return Err(invalid(
                format!("{prefix}env[{i}].key"),
                format!(
                    "{:?} contains `=`, which ends an environment variable's name",
                    kv.key
                ),
            ));
        }
        if kv.key.contains('\0') {
            return Err(invalid(
                format!("{prefix}env[{i}].key"),
                "contains a NUL byte",
            ));
        }
        if kv.value.contains('\0') {
            return Err(invalid(
                format!("{prefix}env[{i}].value"),
                format!("(of {}) contains a NUL byte", kv.key),
            ));
        }
    }
    Ok(())
}

impl LaunchPlan {
    /// Checks that every process of the plan can be executed as given: a
    /// non-empty argv naming a program, no NUL byte in any argument or
    /// environment entry, environment names that are not empty and hold no
    /// `=`. Every plan is validated before it is printed or run.
    pub fn validate(&self) -> Result<(), InvalidField> {
        process("", &self.argv, &self.env)?;
        for (i, rank) in self.ranks.iter().enumerate() {
            process(&format!("ranks[{i}]."), &rank.argv, &rank.env)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RankPlan, Resources};

    fn plan(argv: &[&str], env: &[(&str, &str)]) -> LaunchPlan {
        LaunchPlan {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect(),
            early: false,
            ranks: vec![],
        }
    }

    #[test]
    fn a_sound_plan_passes() {
        assert_eq!(
            plan(&["vllm", "serve", "m"], &[("A", "b=c")]).validate(),
            Ok(())
        );
    }

    #[test]
    fn each_unexecutable_field_is_named() {
        let cases = [
            (plan(&[], &[]), "argv"),
            (plan(&[""], &[]), "argv[0]"),
            (plan(&["vllm", "a\0b"], &[]), "argv[1]"),
            (plan(&["vllm"], &[("", "x")]), "env[0].key"),
            (plan(&["vllm"], &[("A", "1"), ("B=C", "x")]), "env[1].key"),
            (plan(&["vllm"], &[("A\0", "x")]), "env[0].key"),
            (plan(&["vllm"], &[("A", "x\0")]), "env[0].value"),
        ];
        for (p, field) in cases {
            let err = p.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let mut p = plan(&["vllm"], &[]);
        p.ranks.push(RankPlan {
            rank: 1,
            argv: vec!["vllm".into()],
            env: vec![KeyValue::new("X=Y", "1")],
        });
        assert_eq!(p.validate().unwrap_err().field, "ranks[0].env[0].key");
    }

    /// Every documented sample input (`examples/snapshots/`, also the
    /// cases `plugin new` writes) parses strictly and passes its checks.
    #[test]
    fn every_sample_input_is_complete_and_valid() {
        fn strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
            serde_json::from_str(text).map_err(|e| e.to_string())
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/snapshots");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let checked = if name.starts_with("readiness-") {
                strict::<ClusterSnapshot>(&text)
                    .and_then(|v| v.validate().map_err(|e| e.to_string()))
            } else if name.starts_with("launch-") {
                strict::<LaunchRequest>(&text).and_then(|v| v.validate().map_err(|e| e.to_string()))
            } else if name.starts_with("health-") {
                strict::<HealthSnapshot>(&text)
                    .and_then(|v| v.validate().map_err(|e| e.to_string()))
            } else if name.starts_with("node-readings-") {
                strict::<NodeReadings>(&text).and_then(|v| v.validate().map_err(|e| e.to_string()))
            } else if name.starts_with("scale-") {
                strict::<crate::ScaleInput>(&text)
                    .and_then(|v| v.validate().map_err(|e| e.to_string()))
            } else {
                panic!("{name}: no known input type for this prefix");
            };
            assert_eq!(checked, Ok(()), "{name}");
            seen += 1;
        }
        assert!(seen >= 10, "{seen} samples");
    }

    #[test]
    fn negative_or_nan_counts_are_refused_by_path() {
        let mut snapshot = ClusterSnapshot::default();
        snapshot.nodes.push(Node {
            resources: Resources {
                gpu: -1.0,
                ..Resources::default()
            },
            ..Node::default()
        });
        let err = snapshot.validate().unwrap_err();
        assert_eq!(err.field, "nodes[0].resources.gpu");
        assert!(err.to_string().contains("-1"), "{err}");
        let request = LaunchRequest {
            cluster: snapshot,
            ..LaunchRequest::default()
        };
        assert_eq!(
            request.validate().unwrap_err().field,
            "cluster.nodes[0].resources.gpu"
        );
        let readings = NodeReadings {
            advertised_gpus: f64::NAN,
            ..NodeReadings::default()
        };
        assert_eq!(readings.validate().unwrap_err().field, "advertised-gpus");
    }
}

#[cfg(test)]
mod hostile_inputs {
    //! Property tests: any JSON value, and complete inputs with any field
    //! swapped for any value, parse to an input that validates, or to an
    //! error; never a panic.
    use crate::{ClusterSnapshot, HealthSnapshot, LaunchRequest, NodeReadings, ScaleInput};
    use proptest::prelude::*;
    use serde_json::Value;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
            "\\PC{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z-]{1,24}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Parses and validates `value` as every input type.
    fn every_input(value: &Value) {
        if let Ok(v) = serde_json::from_value::<ClusterSnapshot>(value.clone()) {
            let _ = v.validate();
        }
        if let Ok(v) = serde_json::from_value::<LaunchRequest>(value.clone()) {
            let _ = v.validate();
        }
        if let Ok(v) = serde_json::from_value::<HealthSnapshot>(value.clone()) {
            let _ = v.validate();
        }
        if let Ok(v) = serde_json::from_value::<NodeReadings>(value.clone()) {
            let _ = v.validate();
        }
        if let Ok(v) = serde_json::from_value::<ScaleInput>(value.clone()) {
            let _ = v.validate();
        }
    }

    /// Every object field of `value`, by path, in order.
    fn paths(value: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let mut here = at.clone();
                    here.push(k.clone());
                    out.push(here.clone());
                    paths(v, here, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let mut here = at.clone();
                    here.push(i.to_string());
                    paths(v, here, out);
                }
            }
            _ => {}
        }
    }

    fn replace(value: &mut Value, path: &[String], new: Value) {
        let Some((first, rest)) = path.split_first() else {
            *value = new;
            return;
        };
        let next = match value {
            Value::Object(map) => map.get_mut(first),
            Value::Array(items) => first.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        if let Some(next) = next {
            replace(next, rest, new);
        }
    }

    fn samples() -> Vec<Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/snapshots");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_json_is_an_input_or_an_error(value in json()) {
            every_input(&value);
        }

        #[test]
        fn a_sample_with_any_field_swapped_is_an_input_or_an_error(
            which in any::<prop::sample::Index>(),
            field in any::<prop::sample::Index>(),
            new in json(),
        ) {
            let samples = samples();
            let mut value = samples[which.index(samples.len())].clone();
            let mut all = Vec::new();
            paths(&value, vec![], &mut all);
            if !all.is_empty() {
                let path = all[field.index(all.len())].clone();
                replace(&mut value, &path, new);
            }
            every_input(&value);
        }
    }
}
