//! `orchestrator`: the container entrypoint of every Ray pod. It starts Ray,
//! waits for the cluster to form, serves vLLM and keeps it healthy; each
//! phase's policy is a WebAssembly component (see `wit/`).
//!
//! This crate parses arguments and prints; the lifecycle and its phases
//! are the `orchestrator-phases` library.

mod local;
mod node;
mod plugin;
mod run;
mod wait;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: with thousands of nodes in view (each a
/// few dozen small strings and maps), glibc's free lists fragment and a
/// membership update of a few hundred nodes spent most of its time
/// walking them (`bench scale-wait`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Run(run::ConfigArgs),
    /// Start a head and N workers on this machine and run the whole job.
    Local(Box<local::LocalArgs>),
    /// Wait until a Ray cluster is ready; for shell scripts (exit 0 ready,
    /// 1 failed or timed out, 2 bad arguments).
    Wait(wait::WaitArgs),
    /// Print what `run` would do, without running anything (JSON).
    Plan(run::PlanArgs),
    /// Inspect, check and try out policy plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Check this node: GPUs, host and raylet, judged by the node-health
    /// policy.
    #[command(subcommand)]
    Node(node::NodeCommand),
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
    let code = match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Wait(args) => wait::run(args),
        Command::Local(args) => local::run(*args),
        Command::Run(args) => run::run(args),
        Command::Plan(args) => run::plan(args),
    };
    // As a container's PID 1: nothing is left behind for the kernel's
    // SIGKILL, and every orphan is reaped.
    orchestrator_phases::supervision::drain_namespace(std::time::Duration::from_secs(5));
    code
}

/// Runs a lifecycle (`run`, `local`) and turns its end into the exit
/// code, printing the failure.
pub fn run_lifecycle(lifecycle: orchestrator_phases::lifecycle::Lifecycle) -> ExitCode {
    ExitCode::from(lifecycle.run_and_report())
}

/// A runtime on this thread; a failure is printed and becomes exit
/// code 1.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    built.map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
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
