//! What counts as a secret in a launch plan (environment values, flag
//! values) and how it is shown: every log line, `/status`, Event and
//! `plan` output goes through [`Secrets::redact_plan`],
//! [`Secrets::redact_env`] or [`Secrets::redact_argv`]. Entry point:
//! [`Secrets`]; the process-wide rules are [`secrets`] (set once at start
//! with [`install`]).
//!
//! An environment name is secret when it is one of the names given, or
//! matches a pattern (`*` matches any run of characters, case ignored):
//! by default `*TOKEN*`, `*PASSWORD*`, `*SECRET*`, `*_KEY`,
//! `*CREDENTIAL*`. A flag is secret when its name, upper-cased with `-`
//! as `_`, is a secret name that ends in `TOKEN`, `PASSWORD`, `SECRET` or
//! `KEY` (`--api-key`, `--hf-token`, `--redis-password`), or is one of
//! the names given; `--max-num-batched-tokens` is not.

use crate::KeyValue;
use std::sync::OnceLock;

/// What a secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// The default patterns of secret environment names.
pub const DEFAULT_PATTERNS: &[&str] =
    &["*TOKEN*", "*PASSWORD*", "*SECRET*", "*_KEY", "*CREDENTIAL*"];

/// The rules that say which values are secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    names: Vec<String>,
    patterns: Vec<String>,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            patterns: DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl Secrets {
    /// The default rules plus `names` (exact, case ignored) and
    /// `patterns`.
    pub fn with(names: &[String], patterns: &[String]) -> Self {
        let mut rules = Self::default();
        rules
            .names
            .extend(names.iter().map(|n| n.to_ascii_uppercase()));
        rules
            .patterns
            .extend(patterns.iter().map(|p| p.to_ascii_uppercase()));
        rules
    }

    /// Whether the environment variable `name` holds a secret.
    pub fn is_secret_name(&self, name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        self.names.contains(&upper) || self.patterns.iter().any(|p| glob(p, &upper))
    }

    /// Whether the value of the flag `--flag` is a secret.
    pub fn is_secret_flag(&self, flag: &str) -> bool {
        let name = flag
            .trim_start_matches('-')
            .replace('-', "_")
            .to_ascii_uppercase();
        if name.is_empty() {
            return false;
        }
        if self.names.contains(&name) {
            return true;
        }
        ["TOKEN", "PASSWORD", "SECRET", "KEY"]
            .iter()
            .any(|end| name.ends_with(end))
            && self.is_secret_name(&name)
    }

    /// The environment with secret values replaced by [`REDACTED`].
    pub fn redact_env(&self, env: &[KeyValue]) -> Vec<KeyValue> {
        env.iter()
            .map(|kv| {
                if self.is_secret_name(&kv.key) && !kv.value.is_empty() {
                    KeyValue::new(kv.key.clone(), REDACTED)
                } else {
                    kv.clone()
                }
            })
            .collect()
    }

    /// `KEY=VALUE ...` of [`redact_env`](Self::redact_env), for a log
    /// line.
    pub fn show_env(&self, env: &[KeyValue]) -> String {
        self.redact_env(env)
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `argv` with the values of secret flags (`--flag=VALUE` and
    /// `--flag VALUE`) replaced by [`REDACTED`].
    pub fn redact_argv(&self, argv: &[String]) -> Vec<String> {
        let mut shown = Vec::with_capacity(argv.len());
        let mut hide_next = false;
        for arg in argv {
            if hide_next {
                hide_next = false;
                shown.push(REDACTED.to_string());
                continue;
            }
            if let Some(flag) = arg.strip_prefix("--").filter(|f| !f.is_empty()) {
                match flag.split_once('=') {
                    Some((name, value)) if self.is_secret_flag(name) && !value.is_empty() => {
                        shown.push(format!("--{name}={REDACTED}"));
                        continue;
                    }
                    None if self.is_secret_flag(flag) => hide_next = true,
                    _ => {}
                }
            }
            shown.push(arg.clone());
        }
        shown
    }

    /// The secret values a process started with `argv` and `env` (and
    /// this process's own environment, which it inherits) can print: the
    /// values of secret flags and secret variables, 6 bytes or longer (a
    /// shorter one would redact ordinary words).
    pub fn values_in(&self, argv: &[String], env: &[(String, String)]) -> Vec<String> {
        // What `redact_argv` hides is what the process can print.
        let mut values: Vec<String> = argv
            .iter()
            .zip(self.redact_argv(argv))
            .filter(|(arg, shown)| *arg != shown)
            .map(|(arg, shown)| match shown.strip_suffix(REDACTED) {
                Some(flag) if !flag.is_empty() => arg[flag.len()..].to_string(),
                _ => arg.clone(),
            })
            .collect();
        let own = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        for (name, value) in env.iter().cloned().chain(own) {
            if self.is_secret_name(&name) {
                values.push(value);
            }
        }
        values.retain(|v| v.len() >= 6);
        values.sort();
        values.dedup();
        values
    }

    /// `text` with every one of `values` replaced by [`REDACTED`].
    pub fn redact_values(text: &str, values: &[String]) -> String {
        let mut shown = text.to_string();
        for value in values {
            if shown.contains(value.as_str()) {
                shown = shown.replace(value.as_str(), REDACTED);
            }
        }
        shown
    }

    /// A plan as it may be shown: every process's secret env values and
    /// secret flag values replaced.
    pub fn redact_plan(&self, plan: &crate::LaunchPlan) -> crate::LaunchPlan {
        let mut shown = plan.clone();
        shown.argv = self.redact_argv(&plan.argv);
        shown.env = self.redact_env(&plan.env);
        for rank in &mut shown.ranks {
            rank.argv = self.redact_argv(&rank.argv);
            rank.env = self.redact_env(&rank.env);
        }
        shown
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `argv` as it may be logged: [`Secrets::redact_argv`] of the
/// process-wide rules, joined with spaces.
pub fn shown(argv: &[String]) -> String {
    secrets().redact_argv(argv).join(" ")
}

static RULES: OnceLock<Secrets> = OnceLock::new();

/// Sets the process-wide rules (from the configuration), once; later
/// calls are ignored and return `false`.
pub fn install(rules: Secrets) -> bool {
    RULES.set(rules).is_ok()
}

/// The process-wide rules: those [`install`]ed, else the defaults.
pub fn secrets() -> &'static Secrets {
    RULES.get_or_init(Secrets::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_patterns_catch_the_usual_secrets_and_not_their_neighbours() {
        let s = Secrets::default();
        for name in [
            "HF_TOKEN",
            "hf_token",
            "HUGGING_FACE_HUB_TOKEN",
            "REDIS_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "VLLM_API_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ] {
            assert!(s.is_secret_name(name), "{name}");
        }
        for name in ["PATH", "VLLM_HOST_IP", "KEYS", "RAY_ADDRESS", "KEY_PATH"] {
            assert!(!s.is_secret_name(name), "{name}");
        }
        for flag in ["api-key", "hf-token", "redis-password", "--api-key"] {
            assert!(s.is_secret_flag(flag), "{flag}");
        }
        for flag in ["max-num-batched-tokens", "model", "tokenizer", "port"] {
            assert!(!s.is_secret_flag(flag), "{flag}");
        }
    }

    #[test]
    fn argv_and_env_are_redacted_in_both_flag_forms() {
        let s = Secrets::with(&["MY_LICENCE".into()], &["*_PIN".into()]);
        let argv: Vec<String> = [
            "vllm",
            "serve",
            "m",
            "--api-key",
            "canary1",
            "--hf-token=canary2",
            "--max-num-batched-tokens",
            "8192",
            "--my-licence",
            "canary3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let shown = s.redact_argv(&argv).join(" ");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("--max-num-batched-tokens 8192"), "{shown}");
        assert!(shown.contains("--hf-token=<redacted>"), "{shown}");
        let env = vec![
            KeyValue::new("HF_TOKEN", "canary4"),
            KeyValue::new("DOOR_PIN", "canary5"),
            KeyValue::new("VLLM_HOST_IP", "10.0.0.1"),
        ];
        let shown = s.show_env(&env);
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("VLLM_HOST_IP=10.0.0.1"), "{shown}");
        // A flag at the end with no value hides nothing and loses nothing.
        let argv = vec!["x".to_string(), "--api-key".to_string()];
        assert_eq!(s.redact_argv(&argv), argv);
    }

    #[test]
    fn glob_matches_like_a_shell_star() {
        assert!(glob("*TOKEN*", "TOKEN"));
        assert!(glob("*_KEY", "A_KEY"));
        assert!(!glob("*_KEY", "A_KEYS"));
        assert!(glob("A*B*C", "AXXBYYC"));
        assert!(!glob("A*B*C", "AC"));
        assert!(glob("EXACT", "EXACT"));
        assert!(!glob("AB*BA", "ABA"));
    }
}
