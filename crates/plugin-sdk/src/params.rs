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

/// A parameter that is present but cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's key.
    pub key: String,
    /// Its value as given.
    pub value: String,
    /// What was expected, for example `an unsigned integer`.
    pub expected: &'static str,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy parameter `{}` = {:?} is not {}",
            self.key, self.value, self.expected
        )
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
                value: raw.to_string(),
                expected,
            }),
        }
    }

    /// `key` as an unsigned integer, `default` when absent.
    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32, ParamError> {
        self.parse_or(key, default, "an unsigned integer")
    }

    /// `key` as a number, `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ParamError> {
        self.parse_or(key, default, "a number")
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
