//! A launch policy whose plan is whatever its parameters say, so a test can
//! hand the host plans it must refuse: `argv` (entries separated by `|`;
//! empty for an empty argv), `env-key` and `env-value` (one variable).
use orchestrator_plugin_sdk::launch::*;

struct Hostile;

impl LaunchPolicy for Hostile {
    fn plan(
        _cluster: &Cluster,
        _settings: &ServeSettings,
        params: &Params,
    ) -> Result<LaunchPlan, LaunchError> {
        let argv = match params.get("argv") {
            Some("") => vec![],
            Some(list) => list.split('|').map(str::to_string).collect(),
            None => vec!["vllm".to_string(), "serve".to_string()],
        };
        let env = match params.get("env-key") {
            Some(key) => vec![KeyValue {
                key: key.to_string(),
                value: params.get("env-value").unwrap_or("").to_string(),
            }],
            None => vec![],
        };
        Ok(LaunchPlan {
            argv,
            env,
            early: false,
            ranks: vec![],
        })
    }
}

orchestrator_plugin_sdk::export_launch_policy!(Hostile);
