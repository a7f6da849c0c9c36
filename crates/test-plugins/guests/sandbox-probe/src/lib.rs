//! A readiness policy that reports what the sandbox lets it see: a file,
//! environment variables, the clock. Always answers `wait(report)`.
//! With `exit=N` it calls `exit(N)` instead; with `log-bytes=N` it first
//! logs one message of N bytes (hostile inputs to the host's calls).
use orchestrator_plugin_sdk::log;
use orchestrator_plugin_sdk::readiness::*;

struct Probe;

impl ReadinessPolicy for Probe {
    fn check(_cluster: &Cluster, params: &Params) -> Readiness {
        if let Some(code) = params.get("exit").and_then(|c| c.parse::<i32>().ok()) {
            std::process::exit(code);
        }
        if let Some(n) = params
            .get("log-bytes")
            .and_then(|c| c.parse::<usize>().ok())
        {
            log::info(&"x".repeat(n), &[]);
        }
        let file = match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => format!("read {} bytes", text.len()),
            Err(e) => format!("error: {e}"),
        };
        let env_count = std::env::vars().count();
        let home = std::env::var("HOME").unwrap_or_else(|_| "<unset>".to_string());
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        Readiness::Wait(format!(
            "file={file}; env-vars={env_count}; HOME={home}; clock-secs={clock}"
        ))
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(Probe);
