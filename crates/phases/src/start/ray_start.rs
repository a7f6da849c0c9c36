//! The `ray start` command: built from the configuration, or parsed from
//! KubeRay's `KUBERAY_GEN_RAY_START_CMD`, always run as an argv (never
//! through a shell) and never with `--block` (the orchestrator supervises
//! Ray itself, so it can go on to the wait and serve phases).

use crate::config::{Config, Role};
use std::path::{Path, PathBuf};

/// The environment variable KubeRay sets to its generated start command.
pub const KUBERAY_ENV: &str = "KUBERAY_GEN_RAY_START_CMD";

/// `ray start` flags that take no value.
const BOOLEAN_FLAGS: &[&str] = &[
    "head",
    "block",
    "disable-usage-stats",
    "enable-usage-stats",
    "verbose",
    "no-monitor",
    "log-style",
];

/// One `ray start` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RayArg {
    /// A flag without a value, e.g. `--head`.
    Flag(String),
    /// `--name=value`.
    Value(String, String),
}

impl RayArg {
    /// The flag's name, without dashes.
    pub fn name(&self) -> &str {
        match self {
            Self::Flag(n) | Self::Value(n, _) => n,
        }
    }
}

/// A `ray start` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RayStart {
    /// The `ray` executable.
    pub program: PathBuf,
    /// The arguments after `start`.
    pub args: Vec<RayArg>,
}

/// Why a KubeRay command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RayStartError {
    /// The text is not plain words: quoting, shell syntax, a variable.
    #[error(
        "{KUBERAY_ENV} is refused: {0}; the orchestrator runs `ray start` without a shell (only $NAME and ${{NAME}} are expanded), so move anything else (ulimit, other commands) into its configuration"
    )]
    Words(#[source] crate::start::words::WordsError),
    /// Not a `ray start` command.
    #[error(
        "{KUBERAY_ENV} must be a `ray start ...` command, but it is {0:?}; unset `ray.use-kuberay-command` or fix the variable"
    )]
    NotRayStart(String),
    /// The variable is not set.
    #[error(
        "`ray.use-kuberay-command` is set but {KUBERAY_ENV} is not in the environment; KubeRay sets it in Ray pods"
    )]
    Missing,
    /// An entry of `ray.extra-args` is not `--name[=value]` words.
    #[error(
        "ray.extra-args entry {arg:?} is refused ({reason}); write each entry as `--name=value` or `--flag`"
    )]
    ExtraArg {
        /// The entry.
        arg: String,
        /// Why.
        reason: String,
    },
    /// The variable named to hold Redis's password is not set.
    #[error(
        "ray.gcs-fault-tolerance.redis-password-env names {0}, which is not set (or not UTF-8); set it from the Redis password's Secret, or leave redis-password-env out for a Redis without a password"
    )]
    RedisPassword(String),
}

impl RayStart {
    /// The argv: program, `start`, then each argument as `--name[=value]`.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.display().to_string(), "start".to_string()];
        for arg in &self.args {
            argv.push(match arg {
                RayArg::Flag(n) => format!("--{n}"),
                RayArg::Value(n, v) => format!("--{n}={v}"),
            });
        }
        argv
    }

    /// The value of `--name`, if set.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.args.iter().rev().find_map(|a| match a {
            RayArg::Value(n, v) if n == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether `--name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.args.iter().any(|a| a.name() == name)
    }

    /// Sets `--name=value`, replacing any earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.args.retain(|a| a.name() != name);
        self.args
            .push(RayArg::Value(name.to_string(), value.into()));
    }

    /// Adds `--name` unless present.
    pub fn flag(&mut self, name: &str) {
        if !self.has(name) {
            self.args.push(RayArg::Flag(name.to_string()));
        }
    }

    /// Parses KubeRay's generated command: shell words, no shell, `$NAME`
    /// from this process's environment ([`words::split`](super::words::split));
    /// must be `ray start ...`; `--block` is dropped.
    #[cfg(test)]
    pub(crate) fn parse_kuberay(command: &str) -> Result<Self, RayStartError> {
        Self::parse_kuberay_in(command, &|name| std::env::var_os(name))
    }

    /// [`parse_kuberay`](Self::parse_kuberay) with variables from `lookup`.
    pub(crate) fn parse_kuberay_in(
        command: &str,
        lookup: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, RayStartError> {
        let words = super::words::split(command, lookup).map_err(RayStartError::Words)?;
        let is_ray = words
            .first()
            .and_then(|w| Path::new(w).file_name())
            .is_some_and(|n| n == "ray");
        if !is_ray || words.get(1).map(String::as_str) != Some("start") {
            return Err(RayStartError::NotRayStart(command.to_string()));
        }
        let mut args = Vec::new();
        let mut rest = words[2..].iter().peekable();
        while let Some(word) = rest.next() {
            let Some(body) = word.strip_prefix("--") else {
                return Err(RayStartError::NotRayStart(command.to_string()));
            };
            let arg = match body.split_once('=') {
                Some((name, value)) => RayArg::Value(name.to_string(), value.to_string()),
                None if BOOLEAN_FLAGS.contains(&body) => RayArg::Flag(body.to_string()),
                None => match rest.peek() {
                    Some(next) if !next.starts_with("--") => {
                        let value = rest.next().cloned().unwrap_or_default();
                        RayArg::Value(body.to_string(), value)
                    }
                    _ => RayArg::Flag(body.to_string()),
                },
            };
            if arg.name() == "block" {
                continue;
            }
            args.push(arg);
        }
        Ok(Self {
            program: PathBuf::from(&words[0]),
            args,
        })
    }

    /// The command for this node: KubeRay's (when configured) with the
    /// configuration's fields as overrides, or one built from the
    /// configuration alone. `kuberay` is the variable's value, if set.
    pub(crate) fn for_config(
        config: &Config,
        kuberay: Option<&str>,
    ) -> Result<Self, RayStartError> {
        Self::for_config_in(config, kuberay, &|name| std::env::var_os(name))
    }

    /// [`for_config`](Self::for_config) with variables from `lookup`.
    pub(crate) fn for_config_in(
        config: &Config,
        kuberay: Option<&str>,
        lookup: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, RayStartError> {
        let ray = &config.ray;
        let mut cmd = if ray.use_kuberay_command {
            let text = kuberay.ok_or(RayStartError::Missing)?;
            let mut cmd = Self::parse_kuberay_in(text, lookup)?;
            cmd.program = ray.bin.clone();
            cmd
        } else {
            let mut cmd = Self {
                program: ray.bin.clone(),
                args: vec![],
            };
            match config.role {
                Role::Head => {
                    cmd.flag("head");
                    cmd.set("port", ray.gcs_port.to_string());
                }
                Role::Worker => {
                    if let Some(addr) = &ray.gcs_address {
                        cmd.set("address", addr.clone());
                    }
                }
            }
            cmd
        };
        cmd.set_node_flags(config);
        cmd.flag("disable-usage-stats");
        if let Some(var) = ray
            .gcs_fault_tolerance
            .as_ref()
            .and_then(|ft| ft.redis_password_env.as_ref())
            && config.role == Role::Head
            && !cmd.has("redis-password")
        {
            let password = lookup(var)
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| RayStartError::RedisPassword(var.clone()))?;
            cmd.set("redis-password", password);
        }
        for extra in &ray.extra_args {
            let parsed =
                Self::parse_kuberay_in(&format!("ray start {extra}"), lookup).map_err(|error| {
                    RayStartError::ExtraArg {
                        arg: extra.clone(),
                        reason: error.to_string(),
                    }
                })?;
            for arg in parsed.args {
                match arg {
                    RayArg::Flag(n) => cmd.flag(&n),
                    RayArg::Value(n, v) => cmd.set(&n, v),
                }
            }
        }
        Ok(cmd)
    }

    /// The node's own settings of `[ray]`: address, resources, labels,
    /// dashboard and metrics ports, the head's temp dir.
    fn set_node_flags(&mut self, config: &Config) {
        let ray = &config.ray;
        if let Some(ip) = &ray.node_ip {
            self.set("node-ip-address", ip.clone());
        }
        if let Some(v) = ray.num_cpus {
            self.set("num-cpus", trim_float(v));
        }
        if let Some(v) = ray.num_gpus {
            self.set("num-gpus", trim_float(v));
        }
        if let Some(v) = ray.memory {
            self.set("memory", v.to_string());
        }
        if let Some(v) = ray.object_store_memory {
            self.set("object-store-memory", v.to_string());
        }
        if !ray.labels.is_empty() {
            self.set(
                "labels",
                serde_json::to_string(&ray.labels).unwrap_or_default(),
            );
        }
        if !ray.resources.is_empty() {
            self.set(
                "resources",
                serde_json::to_string(&ray.resources).unwrap_or_default(),
            );
        }
        if let Some(v) = ray.dashboard_port {
            self.set("dashboard-port", v.to_string());
        }
        if let Some(v) = &ray.dashboard_host {
            self.set("dashboard-host", v.clone());
        }
        if let Some(v) = ray.dashboard_agent_listen_port {
            self.set("dashboard-agent-listen-port", v.to_string());
        }
        if let Some(v) = ray.metrics_export_port {
            self.set("metrics-export-port", v.to_string());
        }
        if let Some(v) = &ray.temp_dir
            && config.role == Role::Head
        {
            self.set("temp-dir", v.display().to_string());
        }
    }

    /// The argv as shown to people (plans, logs, errors): secrets such as
    /// `--redis-password` replaced by `<redacted>`.
    pub(crate) fn argv_redacted(&self) -> Vec<String> {
        redact(&self.argv())
    }

    /// The GCS address a worker joins (`--address`).
    pub(crate) fn join_address(&self) -> Option<&str> {
        if self.has("head") {
            None
        } else {
            self.value("address")
        }
    }
}

/// `argv` with the values of secret flags (`--redis-password`, and every
/// flag [`orchestrator_domain::secrets`] names) replaced by `<redacted>`.
pub(crate) fn redact(argv: &[String]) -> Vec<String> {
    orchestrator_domain::secrets::secrets().redact_argv(argv)
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly the strings KubeRay generates (sorted flags, `--block`
    /// always present), for a head and a worker.
    const KUBERAY_HEAD: &str = "ray start --head  --block  --dashboard-agent-listen-port=52365  --memory=1073741824  --num-cpus=1  --metrics-export-port=8080  --dashboard-host=0.0.0.0 ";
    const KUBERAY_WORKER: &str = "ray start  --address=raycluster-kuberay-head-svc.default.svc.cluster.local:6379  --block  --dashboard-agent-listen-port=52365  --memory=1073741824  --metrics-export-port=8080  --num-cpus=1  --num-gpus=1 ";

    #[test]
    fn kuberay_head_command_parses_and_block_is_dropped() {
        let cmd = RayStart::parse_kuberay(KUBERAY_HEAD).expect("parses");
        assert!(cmd.has("head"));
        assert!(!cmd.has("block"));
        assert_eq!(cmd.value("memory"), Some("1073741824"));
        assert_eq!(cmd.value("dashboard-host"), Some("0.0.0.0"));
        assert_eq!(
            cmd.argv(),
            vec![
                "ray",
                "start",
                "--head",
                "--dashboard-agent-listen-port=52365",
                "--memory=1073741824",
                "--num-cpus=1",
                "--metrics-export-port=8080",
                "--dashboard-host=0.0.0.0"
            ]
        );
    }

    #[test]
    fn kuberay_worker_command_keeps_the_head_address() {
        let cmd = RayStart::parse_kuberay(KUBERAY_WORKER).expect("parses");
        assert_eq!(
            cmd.join_address(),
            Some("raycluster-kuberay-head-svc.default.svc.cluster.local:6379")
        );
        assert_eq!(cmd.value("num-gpus"), Some("1"));
        assert!(!cmd.argv().iter().any(|a| a.contains("block")));
    }

    #[test]
    fn quoting_survives_without_a_shell() {
        let cmd = RayStart::parse_kuberay(
            r#"ray start --head --block --resources='{"TPU": 4, "x y": 1}' --labels "{\"zone\": \"a b\"}" --num-cpus 2"#,
        )
        .expect("parses");
        assert_eq!(cmd.value("resources"), Some(r#"{"TPU": 4, "x y": 1}"#));
        assert_eq!(cmd.value("labels"), Some(r#"{"zone": "a b"}"#));
        assert_eq!(cmd.value("num-cpus"), Some("2"));
        assert!(
            cmd.argv()
                .contains(&r#"--resources={"TPU": 4, "x y": 1}"#.to_string())
        );
    }

    #[test]
    fn gcs_fault_tolerance_password_is_expanded_and_never_shown() {
        // KubeRay's head command with gcsFaultToleranceOptions.redisPassword.
        let text = "ray start --head  --block  --redis-password=$REDIS_PASSWORD  --num-cpus=1 ";
        let lookup = |n: &str| (n == "REDIS_PASSWORD").then(|| "p@ss w$rd".into());
        let cmd = RayStart::parse_kuberay_in(text, &lookup).expect("parses");
        assert_eq!(cmd.value("redis-password"), Some("p@ss w$rd"));
        assert!(
            cmd.argv()
                .contains(&"--redis-password=p@ss w$rd".to_string())
        );
        let shown = cmd.argv_redacted();
        assert!(shown.contains(&"--redis-password=<redacted>".to_string()));
        assert!(!shown.join(" ").contains("p@ss"), "{shown:?}");
        // Unset: refused naming the variable, not passed on literally.
        let err = RayStart::parse_kuberay_in(text, &|_| None).expect_err("refused");
        assert!(err.to_string().contains("$REDIS_PASSWORD"), "{err}");
    }

    #[test]
    fn gcs_fault_tolerance_from_the_configuration() {
        let config = |role: &str, extra: &[&str]| {
            let mut sets = vec![
                format!("role=\"{role}\""),
                "ray.gcs-address=\"head:6379\"".to_string(),
                "ray.gcs-fault-tolerance.redis-address=\"redis:6379\"".to_string(),
                "ray.gcs-fault-tolerance.redis-password-env=\"REDIS_PASSWORD\"".to_string(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            Config::load(None, std::iter::empty(), &sets).expect("loads")
        };
        let head = config("head", &[]);
        let lookup = |n: &str| (n == "REDIS_PASSWORD").then(|| "hunter2".into());
        let cmd = RayStart::for_config_in(&head, None, &lookup).expect("builds");
        assert_eq!(cmd.value("redis-password"), Some("hunter2"));
        assert!(!cmd.argv_redacted().join(" ").contains("hunter2"));
        let ft = head.ray.gcs_fault_tolerance.as_ref().expect("set");
        let env = ft.env(Role::Head);
        assert!(env.contains(&("RAY_REDIS_ADDRESS".into(), "redis:6379".into())));
        assert!(env.contains(&(
            "RAY_gcs_rpc_server_reconnect_timeout_s".into(),
            "600".into()
        )));
        // The variable unset: refused, naming it.
        let err = RayStart::for_config_in(&head, None, &|_| None).expect_err("refused");
        assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
        // A worker gets the reconnect timeout only, and no password.
        let worker = config(
            "worker",
            &["ray.gcs-fault-tolerance.reconnect-timeout-seconds=900"],
        );
        let cmd = RayStart::for_config_in(&worker, None, &lookup).expect("builds");
        assert!(!cmd.has("redis-password"));
        let env = worker
            .ray
            .gcs_fault_tolerance
            .as_ref()
            .expect("set")
            .env(Role::Worker);
        assert_eq!(
            env,
            vec![(
                "RAY_gcs_rpc_server_reconnect_timeout_s".to_string(),
                "900".to_string()
            )]
        );
        // A head without Redis, or a timeout of 0: refused with the fix.
        let err = Config::load(
            None,
            std::iter::empty(),
            &[
                "role=\"head\"".to_string(),
                "ray.gcs-fault-tolerance.reconnect-timeout-seconds=600".to_string(),
            ],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("redis-address"), "{err}");
        let err = Config::load(
            None,
            std::iter::empty(),
            &[
                "role=\"worker\"".to_string(),
                "ray.gcs-address=\"head:6379\"".to_string(),
                "ray.gcs-fault-tolerance.reconnect-timeout-seconds=0".to_string(),
            ],
        )
        .expect_err("refused");
        assert!(
            err.to_string().contains("reconnect-timeout-seconds"),
            "{err}"
        );
    }

    #[test]
    fn extra_args_that_are_not_flags_are_refused_not_dropped() {
        let load = |extra: &str| {
            Config::load(
                None,
                std::iter::empty(),
                &[
                    "role=\"head\"".to_string(),
                    format!("ray.extra-args=[{extra:?}]"),
                ],
            )
            .expect("loads")
        };
        let cmd = RayStart::for_config(&load("--include-dashboard=false"), None).expect("builds");
        assert_eq!(cmd.value("include-dashboard"), Some("false"));
        for bad in ["include-dashboard", "--x=$(whoami)", "--a 'unclosed"] {
            let err = RayStart::for_config(&load(bad), None).expect_err(bad);
            assert!(
                matches!(err, RayStartError::ExtraArg { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("ray.extra-args"), "{err}");
        }
    }

    #[test]
    fn anything_but_ray_start_is_refused() {
        assert!(matches!(
            RayStart::parse_kuberay("ulimit -n 65536; ray start --head"),
            Err(RayStartError::Words(_))
        ));
        assert!(matches!(
            RayStart::parse_kuberay("ray stop --force"),
            Err(RayStartError::NotRayStart(_))
        ));
        assert!(matches!(
            RayStart::parse_kuberay("python -m ray start"),
            Err(RayStartError::NotRayStart(_))
        ));
        assert!(matches!(
            RayStart::parse_kuberay("ray start --head && vllm serve m"),
            Err(RayStartError::Words(_))
        ));
        assert!(matches!(
            RayStart::parse_kuberay("ray start --head 'unterminated"),
            Err(RayStartError::Words(_))
        ));
        assert!(RayStart::parse_kuberay("/usr/local/bin/ray start --head --block").is_ok());
    }

    #[test]
    fn configuration_overrides_the_kuberay_command() {
        let mut config = Config::default();
        config.ray.use_kuberay_command = true;
        config.ray.num_cpus = Some(4.0);
        config.ray.bin = PathBuf::from("/venv/bin/ray");
        config
            .ray
            .labels
            .insert("accelerator".into(), "a100".into());
        let cmd = RayStart::for_config(&config, Some(KUBERAY_HEAD)).expect("builds");
        let argv = cmd.argv();
        assert_eq!(argv[0], "/venv/bin/ray");
        assert!(argv.contains(&"--num-cpus=4".to_string()), "{argv:?}");
        assert!(!argv.contains(&"--num-cpus=1".to_string()), "{argv:?}");
        assert!(
            argv.contains(&r#"--labels={"accelerator":"a100"}"#.to_string()),
            "{argv:?}"
        );
        assert!(!argv.iter().any(|a| a == "--block"));

        assert_eq!(
            RayStart::for_config(&config, None),
            Err(RayStartError::Missing)
        );
    }

    #[test]
    fn head_and_worker_from_configuration() {
        let mut config = Config::default();
        config.ray.node_ip = Some("127.0.0.2".into());
        config.ray.memory = Some(1 << 30);
        let head = RayStart::for_config(&config, None)
            .expect("head")
            .argv()
            .join(" ");
        assert_eq!(
            head,
            "ray start --head --port=6379 --node-ip-address=127.0.0.2 --memory=1073741824 --disable-usage-stats"
        );
        config.role = Role::Worker;
        config.ray.gcs_address = Some("127.0.0.2:6379".into());
        let worker = RayStart::for_config(&config, None).expect("worker");
        assert_eq!(worker.join_address(), Some("127.0.0.2:6379"));
        assert!(!worker.has("head"));
    }
}
