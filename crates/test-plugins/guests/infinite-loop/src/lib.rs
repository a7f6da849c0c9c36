//! A readiness policy that never returns.
use orchestrator_plugin_sdk::readiness::*;

struct Forever;

impl ReadinessPolicy for Forever {
    fn check(cluster: &Cluster, _params: &Params) -> Readiness {
        let mut n: u64 = cluster.nodes().len() as u64;
        loop {
            n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
            if n == 42 {
                return Readiness::Ready;
            }
        }
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(Forever);
