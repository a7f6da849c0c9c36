//! `orchestrator run` (this pod's role from a configuration) and
//! `orchestrator plan` (what `run` would do, without running anything):
//! arguments in, the library's plan and lifecycle, the outcome printed.

use clap::Args;
use orchestrator_phases::config::{Config, ConfigError, Role};
use orchestrator_phases::prepare::{describe_plan, lifecycle_for};
use orchestrator_phases::start::KUBERAY_ENV;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the configuration comes from.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any field by its dotted path, e.g. --set ray.num-cpus=4 (repeatable;
    /// ORCHESTRATOR__RAY__NUM_CPUS=4 does the same from the environment).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// This pod's role; overrides `role` in the file.
    #[arg(long, value_parser = parse_role)]
    pub role: Option<Role>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "head" => Ok(Role::Head),
        "worker" => Ok(Role::Worker),
        other => Err(format!("{other:?} is no role: use head or worker")),
    }
}

impl ConfigArgs {
    /// Loads and checks the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        // The environment is read as bytes: a variable that is not UTF-8
        // and not ours must not stop the orchestrator.
        let env = orchestrator_phases::config::orchestrator_variables(std::env::vars_os())?;
        Config::load_as(self.config.as_deref(), env, &self.sets, self.role)
    }
}

/// `orchestrator plan` arguments.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Take the expected topology from a RayCluster or RayClusterFleet
    /// manifest (YAML), as `run` takes it from the API server when
    /// `kubernetes.enabled`; fields set under [cluster] still win.
    #[arg(long, value_name = "FILE")]
    pub raycluster: Option<PathBuf>,
}

/// Prints `error: ...` and returns `code`.
/// KubeRay's generated command, if set; one that is not UTF-8 is refused
/// by name rather than read as "not set".
fn kuberay_command() -> Result<Option<String>, String> {
    match std::env::var_os(KUBERAY_ENV) {
        None => Ok(None),
        Some(value) => value.into_string().map(Some).map_err(|_| {
            format!("{KUBERAY_ENV} is not UTF-8: KubeRay writes it as text, so something else set it; unset it or fix its value")
        }),
    }
}

fn refuse(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}

/// `orchestrator plan`: the plan as JSON. Exit 0, or 2 for a bad
/// configuration, manifest or plugin.
pub fn plan(args: PlanArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => return refuse(2, e),
    };
    let manifest = match &args.raycluster {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.display().to_string(), text)),
            Err(e) => {
                return refuse(
                    2,
                    format!("cannot read the manifest {}: {e}", path.display()),
                );
            }
        },
    };
    let kuberay = match kuberay_command() {
        Ok(k) => k,
        Err(e) => return refuse(2, e),
    };
    let described = describe_plan(
        &config,
        manifest.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        kuberay.as_deref(),
        &|name| std::env::var(name).ok(),
    );
    match described {
        Ok(described) => {
            for warning in &described.warnings {
                eprintln!("warning: {warning}");
            }
            let text = serde_json::to_string_pretty(&described.plan).unwrap_or_default();
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => refuse(2, e),
    }
}

/// `orchestrator run`: 0 after a requested stop, 1 for a failure, 2 for
/// a configuration or policy refused before anything started.
pub fn run(args: ConfigArgs) -> ExitCode {
    // Everything that can be refused is checked before anything starts.
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => return refuse(2, e),
    };
    let kuberay = match kuberay_command() {
        Ok(k) => k,
        Err(e) => return refuse(2, e),
    };
    match lifecycle_for(&config, kuberay.as_deref(), &|name| {
        std::env::var(name).ok()
    }) {
        Ok(lifecycle) => crate::run_lifecycle(lifecycle),
        Err(e) => refuse(2, e),
    }
}
