//! `orchestrator`: the container entrypoint of every Ray pod. It starts Ray,
//! waits for the cluster to form, serves vLLM and keeps it healthy; each
//! phase's policy is a WebAssembly component (see `wit/`).

mod host;
mod kube_setup;
mod local_cmd;
mod plugin_cmd;
mod run_cmd;
mod serve_cmd;

mod wait_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Start Ray, wait for the whole cluster, serve vLLM, keep it healthy.
#[derive(Parser, Debug)]
#[command(name = "orchestrator", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info` or `orchestrator=debug`.
    #[arg(long, env = "ORCHESTRATOR_LOG", default_value = "info", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run this pod's role (head or worker) from a configuration file.
    Run(run_cmd::ConfigArgs),
    /// Start a head and N workers on this machine and run the whole job.
    Local(Box<local_cmd::LocalArgs>),
    /// Wait until a Ray cluster is ready; for shell scripts (exit 0 ready,
    /// 1 failed or timed out, 2 bad arguments).
    Wait(wait_cmd::WaitArgs),
    /// Print what `run` would do, without running anything (JSON).
    Plan(run_cmd::PlanArgs),
    /// Inspect, check and try out policy plugins.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(&cli.log);
    match cli.command {
        Command::Plugin(cmd) => plugin_cmd::run(cmd),
        Command::Wait(args) => wait_cmd::run(args),
        Command::Local(args) => local_cmd::run(*args),
        Command::Run(args) => run_cmd::run(args),
        Command::Plan(args) => run_cmd::plan(args),
    }
}

/// Runs a long-lived command (`run`, `local`) on a two-thread runtime; an
/// error is printed and exits 1.
pub fn run_async(work: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
