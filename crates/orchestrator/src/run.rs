//! `orchestrator run` (this pod's role from a configuration) and
//! `orchestrator plan` (what `run` would do, without running anything):
//! arguments in, the library's plan and lifecycle, the outcome printed.

use anyhow::Context;
use clap::Args;
use orchestrator_phases::config::{Config, ConfigError, Role};
use orchestrator_phases::lifecycle;
use orchestrator_phases::native::{Backend, NativeIdentity};
use orchestrator_phases::policies::{self, Policies};
use orchestrator_phases::prepare::lifecycle_for;
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
    if config.backend == Backend::Native {
        return plan_native(&config);
    }
    let topology = match &args.raycluster {
        None => config.cluster.topology(),
        Some(path) => {
            let manifest = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the manifest {}", path.display()))
                .and_then(|text| {
                    if config.role == Role::Head {
                        warn_on_gateway_name(&config, &text);
                    }
                    orchestrator_kubernetes::raycluster::topology_from_yaml(&text)
                        .with_context(|| path.display().to_string())
                });
            match manifest {
                Ok(t) => config.cluster.merge(t),
                Err(e) => return refuse(2, format!("{e:#}")),
            }
        }
    };
    let mut loaded = match head_policies(&config) {
        Ok(p) => p,
        Err(e) => return refuse(2, e),
    };
    let kuberay = match kuberay_command() {
        Ok(k) => k,
        Err(e) => return refuse(2, e),
    };
    printed(lifecycle::describe(
        &config,
        &topology,
        kuberay.as_deref(),
        loaded.as_mut(),
    ))
}

/// A described plan printed as JSON (exit 0), or its error (exit 2).
fn printed(described: Result<serde_json::Value, impl std::fmt::Display>) -> ExitCode {
    match described {
        Ok(json) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => refuse(2, e),
    }
}

/// Warns when AIBrix's gateway would route a model name that vLLM does not
/// serve: the gateway forwards the request's model unchanged to the pods
/// labelled with it, so vLLM must serve under that name.
fn warn_on_gateway_name(config: &Config, manifest: &str) {
    let Some(label) = orchestrator_kubernetes::raycluster::aibrix_model_label(manifest) else {
        return;
    };
    let served = config
        .serve
        .served_model_name
        .as_deref()
        .or(config.serve.model.as_deref());
    if let Some(served) = served
        && served != label
    {
        eprintln!(
            "warning: AIBrix's gateway routes model {label:?} (label {}) to this fleet and forwards that name unchanged, but vLLM serves {served:?}: requests would get 404. Set serve.served-model-name = {label:?} (or ORCHESTRATOR__SERVE__SERVED_MODEL_NAME={label})",
            orchestrator_kubernetes::raycluster::AIBRIX_MODEL_LABEL
        );
    }
}

/// The head's policies; workers run none (a policy file mounted only on
/// the head is not looked for on a worker).
fn head_policies(config: &Config) -> Result<Option<Policies>, policies::PolicyError> {
    match config.role {
        Role::Head => Policies::of_config(config).map(Some),
        Role::Worker => Ok(None),
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

/// This node's place in a native group, from the configuration and the
/// environment.
fn native_identity(
    config: &Config,
) -> Result<NativeIdentity, orchestrator_phases::native::IdentityError> {
    NativeIdentity::resolve(&config.native, &|name| std::env::var(name).ok())
}

/// `orchestrator plan` with `backend = "native"`.
fn plan_native(config: &Config) -> ExitCode {
    let identity = match native_identity(config) {
        Ok(i) => i,
        Err(e) => return refuse(2, e),
    };
    let mut loaded = if identity.is_leader() {
        match Policies::of_config(config) {
            Ok(p) => Some(p),
            Err(e) => return refuse(2, e),
        }
    } else {
        None
    };
    printed(orchestrator_phases::native::describe(
        config,
        &identity,
        loaded.as_mut().map(|p| &mut p.launch),
    ))
}
