//! A health policy that logs and prints far more than the host keeps.
use orchestrator_plugin_sdk::health::*;
use orchestrator_plugin_sdk::log;

struct Chatty;

impl HealthPolicy for Chatty {
    fn evaluate(snapshot: &HealthSnapshot, _cluster: &Cluster, _params: &Params) -> HealthVerdict {
        for i in 0..1000 {
            log::info("chatty record", &[("i", &i.to_string())]);
        }
        for _ in 0..10 {
            eprintln!("{}", "x".repeat(1000));
        }
        HealthVerdict::Degraded(format!("restarts={}", snapshot.restarts))
    }
}

orchestrator_plugin_sdk::export_health_policy!(Chatty);
