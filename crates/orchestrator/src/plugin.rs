//! `orchestrator plugin list|check|run|test|new|push`: the plugin
//! author's tools, printing what `orchestrator-policy-authoring` does.
//! Every command that takes a plugin takes an `oci://` reference too
//! ([`RegistryArgs`]).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use orchestrator_phases::config::{PluginLimits, RegistryConfig};
use orchestrator_phases::policies::{self, PolicyRef};
use orchestrator_policy_authoring::publish::Push;
use orchestrator_policy_authoring::{scaffold, trial};
use orchestrator_policy_host::{HostConfig, PluginError, PolicyHost};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Limits of the plugin host, shared by every plugin command.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// Deadline of one plugin call, in milliseconds.
    #[arg(long, env = "ORCHESTRATOR_PLUGIN_TIMEOUT_MS", default_value_t = 100)]
    pub call_timeout_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, env = "ORCHESTRATOR_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    pub memory_limit_mib: usize,
    /// Where compiled plugins are cached (default: ~/.cache/ray-orchestrator/plugins).
    #[arg(long, env = "ORCHESTRATOR_PLUGIN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not cache compiled plugins.
    #[arg(long, env = "ORCHESTRATOR_PLUGIN_NO_CACHE")]
    pub no_cache: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How `oci://` policies are pulled and pushed.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// A Docker config.json with registry logins (a Kubernetes image pull
    /// secret's .dockerconfigjson); default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json.
    #[arg(long, env = "ORCHESTRATOR_REGISTRY_CONFIG", value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// A registry (HOST[:PORT]) that may be reached over plain HTTP;
    /// repeat or separate with commas.
    #[arg(
        long = "insecure-registry",
        env = "ORCHESTRATOR_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure: Vec<String>,
    /// Where pulled policies are kept by digest (default:
    /// ~/.cache/ray-orchestrator/oci).
    #[arg(long, env = "ORCHESTRATOR_OCI_CACHE_DIR", value_name = "DIR")]
    pub oci_cache_dir: Option<PathBuf>,
    /// Use an oci:// policy only with a signature by this PEM public key
    /// (cosign's layout, checked offline); fails closed.
    #[arg(long, value_name = "PUBLIC_KEY.pem")]
    pub require_signature: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry settings these flags describe.
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            credentials: self.registry_config.clone(),
            insecure: self.insecure.clone(),
            cache_dir: self.oci_cache_dir.clone(),
            require_signature: self.require_signature.is_some(),
            public_key: self.require_signature.clone(),
            ..RegistryConfig::default()
        }
    }

    /// `text` as a policy, pulled first if it is `oci://`.
    pub fn policy(&self, text: &str) -> Result<PolicyRef, policies::PolicyError> {
        PolicyRef::parse(text).fetched(&self.config())
    }
}

impl HostArgs {
    /// The host configuration these flags describe.
    pub fn host_config(&self) -> HostConfig {
        let limits = PluginLimits {
            call_timeout_ms: self.call_timeout_ms,
            memory_limit_mib: self.memory_limit_mib,
            cache_dir: self.cache_dir.clone(),
        };
        let config = limits.host_config();
        if self.no_cache {
            HostConfig {
                cache_dir: None,
                ..config
            }
        } else {
            config
        }
    }
}

/// Inspect, check and try out policy plugins.
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// List the built-in policies: name, world, version, sha256.
    List {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Check that a file is a valid policy component; exit 0 if so, 2 if not.
    Check {
        /// The component file, `builtin:NAME` or `oci://HOST/REPO:TAG[@sha256:..]`.
        plugin: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run a plugin on a JSON input and print its answer as JSON.
    Run {
        /// The component file, `builtin:NAME` or `oci://...`.
        plugin: String,
        /// The input: a cluster-snapshot (readiness), launch-request
        /// (launch) or health-snapshot (health) as JSON, `-` for stdin.
        #[arg(long)]
        input: PathBuf,
        /// A policy parameter, `KEY=VALUE`; repeat for more.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Write a new policy project: build file, a working policy of WORLD to
    /// edit, a README and two fixture cases; it builds and passes
    /// `plugin test` as it is.
    New {
        /// The world: readiness, launch, health, node-health or scale.
        world: String,
        /// The crate's name, e.g. gpu-readiness.
        name: String,
        /// Where to write it (default: ./NAME); must be empty or absent.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK: a directory (crates/plugin-sdk of a checkout) or
        /// git+URL[#REV]; default: the SDK this binary carries, written
        /// into the project's sdk/ folder (no checkout or network needed).
        #[arg(long)]
        sdk: Option<String>,
        /// The language.
        #[arg(long, default_value = "rust", value_name = "rust|python")]
        lang: scaffold::Lang,
    },
    /// Run a policy's fixture cases (a directory of `*.json` files, each
    /// `{"input", "params", "expect"}`); prints one line per case and
    /// `N passed, N failed`; exit 0 all passed, 1 one failed, 2 bad input.
    Test {
        /// The component file, `builtin:NAME` or `oci://...`.
        plugin: String,
        /// The directory of case files.
        cases: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Push a policy component to an OCI registry (the CNCF WebAssembly
    /// artifact layout) and print its digest and pinned reference.
    Push {
        /// The component file (checked first: it must be a policy).
        file: PathBuf,
        /// Where: oci://HOST[:PORT]/REPOSITORY:TAG.
        reference: String,
        /// Also sign it (cosign's layout) with this PEM private key
        /// (PKCS#8 ECDSA P-256).
        #[arg(long, value_name = "PRIVATE_KEY.pem")]
        sign: Option<PathBuf>,
        #[command(flatten)]
        host: HostArgs,
    },
}

/// Runs one plugin command and returns the process exit code.
pub fn run(cmd: PluginCommand) -> ExitCode {
    let result = match cmd {
        PluginCommand::List { host } => list(&host),
        PluginCommand::Check { plugin, host } => check(&plugin, &host),
        PluginCommand::Run {
            plugin,
            input,
            params,
            host,
        } => run_plugin(&plugin, &input, &params, &host),
        PluginCommand::New {
            world,
            name,
            dir,
            sdk,
            lang,
        } => scaffold::new_project(&world, &name, dir.as_deref(), sdk.as_deref(), lang)
            .map_err(anyhow::Error::from)
            .and_then(|created| emit(&created.to_string()))
            .map(|()| ExitCode::SUCCESS),
        PluginCommand::Test {
            plugin,
            cases,
            host,
        } => test_cases(&plugin, &cases, &host),
        PluginCommand::Push {
            file,
            reference,
            sign,
            host,
        } => push(&file, &reference, sign.as_deref(), &host),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn list(host_args: &HostArgs) -> Result<ExitCode> {
    let host = PolicyHost::new(host_args.host_config())?;
    emit(&orchestrator_phases::policies::builtins_table(&host)?)?;
    Ok(ExitCode::SUCCESS)
}

fn check(plugin: &str, host_args: &HostArgs) -> Result<ExitCode> {
    let host = PolicyHost::new(host_args.host_config())?;
    let info = host_args
        .registry
        .policy(plugin)
        .and_then(|p| p.source(None))
        .map_err(|e| e.to_string())
        .and_then(|source| host.inspect(&source).map_err(|e| e.to_string()));
    match info {
        Ok(info) => {
            emit(&info.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn run_plugin(
    plugin: &str,
    input: &Path,
    params: &[String],
    host_args: &HostArgs,
) -> Result<ExitCode> {
    let params = trial::parse_params(params)?;
    let text = trial::read_input(input)?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not JSON ({e})", input.display()))?;
    let host = PolicyHost::new(host_args.host_config())?;
    let source = host_args.registry.policy(plugin)?.source(None)?;
    let world = match host.inspect(&source) {
        Ok(info) => info.world,
        Err(e) => return Ok(plugin_failure(&e)),
    };
    match trial::call(&host, &source, world, value, &params, input)? {
        Ok(value) => {
            emit(&format!("{}\n", serde_json::to_string_pretty(&value)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(plugin_failure(&e)),
    }
}

/// `plugin push FILE oci://...`: the file checked as a policy, then pushed;
/// prints the digest and the pinned reference. Exit 2 for a file that is
/// not a policy or a bad reference, 1 when the registry push fails.
fn push(
    file: &Path,
    reference: &str,
    sign: Option<&Path>,
    host_args: &HostArgs,
) -> Result<ExitCode> {
    let pushed = orchestrator_policy_authoring::publish::push(Push {
        file,
        reference,
        signing_key: sign,
        host: host_args.host_config(),
        registry: host_args.registry.config().settings()?,
    });
    match pushed {
        Ok(p) => {
            emit(&format!(
                "digest: {}\npinned: {}\nworld:  {}\nsize:   {} bytes\n",
                p.digest, p.pinned, p.world, p.size
            ))?;
            if let Some(tag) = p.signed {
                emit(&format!("signed: {tag}\n"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// Prints a plugin error; loading problems exit 2, failed calls exit 1.
fn plugin_failure(e: &PluginError) -> ExitCode {
    eprintln!("error: {e}");
    if e.is_call_failure() {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}

/// `plugin test`: every case, one line each; exit 0 all passed, 1 one
/// failed, 2 bad input.
fn test_cases(plugin: &str, cases: &Path, host_args: &HostArgs) -> Result<ExitCode> {
    let host = PolicyHost::new(host_args.host_config())?;
    let source = host_args.registry.policy(plugin)?.source(None)?;
    let report = orchestrator_policy_authoring::cases::run_cases(&host, &source, cases)
        .with_context(|| format!("cannot test {plugin}"))?;
    emit(&report.to_string())?;
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
