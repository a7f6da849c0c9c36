//! Serving load and the replicas it needs: the samples read from the
//! serving process ([`LoadSample`]), what a scale policy judges
//! ([`ScaleInput`]) and its answer ([`ScaleRecommendation`]).
//!
//! Field names are the WIT's (`wit/policy-0.2.0/types.wit`, kebab-case in
//! serde), where every field is documented. Every field is required when
//! read from JSON (`plugin run`): a missing one is an error, not a zero.

#![allow(missing_docs)] // Each field is documented in the WIT: wit/policy-0.2.0/types.wit.

use serde::{Deserialize, Serialize};

/// One reading of the serving process's load.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoadSample {
    pub at_ms: u64,
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: f64,
    pub generation_tokens_per_second: f64,
    pub prompt_tokens_per_second: f64,
}

impl LoadSample {
    /// Requests the server holds: running and waiting.
    pub fn requests(&self) -> f64 {
        self.running + self.waiting
    }
}

/// What a scale policy judges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScaleInput {
    pub samples: Vec<LoadSample>,
    pub window_ms: u64,
    pub interval_ms: u64,
    pub current_replicas: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub previous_desired: Option<u32>,
    pub since_change_ms: u64,
}

/// Why a [`ScaleInput`] cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScaleInputError {
    /// Bounds the wrong way round.
    #[error("min-replicas {min} is above max-replicas {max}: make min-replicas <= max-replicas")]
    Bounds { min: u32, max: u32 },
    /// A sample with a negative, NaN or infinite reading.
    #[error("sample {index} has {field} = {value}: readings are finite and not negative")]
    Reading {
        index: usize,
        field: &'static str,
        value: f64,
    },
    /// Samples out of time order.
    #[error(
        "sample {index} (at-ms {at}) is older than the one before it: samples are oldest first"
    )]
    Order { index: usize, at: u64 },
}

impl ScaleInput {
    /// Checks what the types cannot: bounds in order, finite non-negative
    /// readings, samples oldest first.
    pub fn validate(&self) -> Result<(), ScaleInputError> {
        if self.min_replicas > self.max_replicas {
            return Err(ScaleInputError::Bounds {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        let mut last = 0;
        for (index, s) in self.samples.iter().enumerate() {
            for (field, value) in [
                ("running", s.running),
                ("waiting", s.waiting),
                ("kv-cache-usage", s.kv_cache_usage),
                (
                    "generation-tokens-per-second",
                    s.generation_tokens_per_second,
                ),
                ("prompt-tokens-per-second", s.prompt_tokens_per_second),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(ScaleInputError::Reading {
                        index,
                        field,
                        value,
                    });
                }
            }
            if s.at_ms < last {
                return Err(ScaleInputError::Order { index, at: s.at_ms });
            }
            last = s.at_ms;
        }
        Ok(())
    }
}

/// A scale policy's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScaleRecommendation {
    pub desired_replicas: u32,
    pub reason: String,
}

impl ScaleRecommendation {
    /// The answer kept within `[min, max]`, the reason saying so when it
    /// was not.
    pub fn bounded(self, min: u32, max: u32) -> Self {
        let kept = self.desired_replicas.clamp(min, max.max(min));
        if kept == self.desired_replicas {
            return self;
        }
        Self {
            desired_replicas: kept,
            reason: format!(
                "{} (the policy said {}; kept within {min}..={max})",
                self.reason, self.desired_replicas
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ScaleInput {
        ScaleInput {
            samples: vec![LoadSample {
                at_ms: 5,
                running: 1.0,
                waiting: 0.0,
                kv_cache_usage: 0.1,
                generation_tokens_per_second: 10.0,
                prompt_tokens_per_second: 3.0,
            }],
            window_ms: 60_000,
            interval_ms: 5_000,
            current_replicas: 1,
            min_replicas: 1,
            max_replicas: 4,
            previous_desired: None,
            since_change_ms: 0,
        }
    }

    #[test]
    fn missing_fields_are_errors_not_zeros() {
        let text = r#"{"samples": [], "window-ms": 1, "interval-ms": 1, "current-replicas": 1, "min-replicas": 0, "max-replicas": 2, "previous-desired": null}"#;
        let err = serde_json::from_str::<ScaleInput>(text).unwrap_err();
        assert!(err.to_string().contains("since-change-ms"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(input().validate(), Ok(()));
        let mut bad = input();
        bad.samples[0].waiting = -1.0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("waiting = -1")
        );
        let mut bad = input();
        bad.min_replicas = 5;
        assert!(matches!(
            bad.validate(),
            Err(ScaleInputError::Bounds { .. })
        ));
        let mut bad = input();
        bad.samples.push(LoadSample {
            at_ms: 1,
            ..bad.samples[0].clone()
        });
        assert!(matches!(
            bad.validate(),
            Err(ScaleInputError::Order { index: 1, .. })
        ));
    }

    #[test]
    fn answers_outside_the_bounds_are_kept_at_the_bound() {
        let r = ScaleRecommendation {
            desired_replicas: 9,
            reason: "busy".into(),
        };
        let kept = r.bounded(1, 4);
        assert_eq!(kept.desired_replicas, 4);
        assert!(kept.reason.contains("the policy said 9"));
        let r = ScaleRecommendation {
            desired_replicas: 2,
            reason: "fine".into(),
        };
        assert_eq!(r.clone().bounded(1, 4), r);
    }
}
