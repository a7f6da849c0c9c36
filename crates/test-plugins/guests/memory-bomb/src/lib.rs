//! A readiness policy that tries to allocate 1 GiB.
use orchestrator_plugin_sdk::readiness::*;

struct Bomb;

impl ReadinessPolicy for Bomb {
    fn check(cluster: &Cluster, _params: &Params) -> Readiness {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        for i in 0..1024 {
            hoard.push(vec![i as u8; 1024 * 1024]);
        }
        Readiness::Wait(format!("{} {}", hoard.len(), cluster.nodes().len()))
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(Bomb);
