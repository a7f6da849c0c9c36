//! Typed access to a policy's parameters (`[policies.<phase>.params]` in the
//! orchestrator's configuration).

use crate::types::KeyValue;
use core::fmt;
use core::str::FromStr;

/// The parameters a policy was configured with.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<KeyValue>,
}

/// A parameter that cannot be used: present but malformed, or required
/// and missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's key.
    pub key: String,
    /// Its value as given; `None` when it is missing.
    pub value: Option<String>,
    /// What was expected, for example `an unsigned integer`.
    pub expected: &'static str,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "policy parameter `{}` = {value:?} is not {}",
                self.key, self.expected
            ),
            None => write!(
                f,
                "policy parameter `{}` is missing: set it to {} in the policy's params",
                self.key, self.expected
            ),
        }
    }
}

impl std::error::Error for ParamError {}

impl Params {
    /// Wraps the key/value pairs the host passed.
    pub fn new(entries: Vec<KeyValue>) -> Self {
        Self { entries }
    }

    /// The raw value of `key`; the last one wins when a key repeats.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_str())
    }

    /// `key` parsed as `T`, `default` when absent, an error when present
    /// but not a valid `T`. `expected` names the type for the message.
    pub fn parse_or<T: FromStr>(
        &self,
        key: &str,
        default: T,
        expected: &'static str,
    ) -> Result<T, ParamError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse::<T>().map_err(|_| ParamError {
                key: key.to_string(),
                value: Some(raw.to_string()),
                expected,
            }),
        }
    }

    /// `key` as an unsigned integer, `default` when absent.
    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32, ParamError> {
        self.parse_or(key, default, "an unsigned integer")
    }

    /// `key` as a finite number, `default` when absent (`NaN` and
    /// infinities are refused).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ParamError> {
        const EXPECTED: &str = "a finite number";
        let value = self.parse_or(key, default, EXPECTED)?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(ParamError {
                key: key.to_string(),
                value: Some(self.get(key).unwrap_or_default().to_string()),
                expected: EXPECTED,
            })
        }
    }

    /// `key` as text, `default` when absent.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// `key` as text; an error naming it when it is absent or empty.
    /// `what` says what to set it to, for the message (for example
    /// `"the label value to wait for"`).
    pub fn required(&self, key: &str, what: &'static str) -> Result<&str, ParamError> {
        match self.get(key) {
            Some(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(ParamError {
                key: key.to_string(),
                value: None,
                expected: what,
            }),
        }
    }

    /// `key` as `true`/`false`, `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ParamError> {
        self.parse_or(key, default, "true or false")
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: (*k).to_string(),
                    value: (*v).to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn numbers_must_be_finite_and_required_text_present() {
        let p = params(&[
            ("gpus", "NaN"),
            ("inf", "inf"),
            ("n", " 3 "),
            ("empty", " "),
        ]);
        let err = p.f64_or("gpus", 0.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy parameter `gpus` = \"NaN\" is not a finite number"
        );
        assert!(p.f64_or("inf", 0.0).is_err());
        assert_eq!(p.f64_or("absent", 2.5), Ok(2.5));
        assert_eq!(p.u32_or("n", 0), Ok(3));
        assert_eq!(p.required("n", "a count"), Ok(" 3 "));
        let err = p
            .required("empty", "the label value to wait for")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy parameter `empty` is missing: set it to the label value to wait for in the policy's params"
        );
        assert!(p.required("absent", "x").is_err());
        assert_eq!(p.str_or("absent", "accelerator"), "accelerator");
    }
}
