//! A readiness policy that panics.
use orchestrator_plugin_sdk::readiness::*;

struct Panics;

impl ReadinessPolicy for Panics {
    fn check(cluster: &Cluster, _params: &Params) -> Readiness {
        let nodes: Vec<u32> = Vec::new();
        if cluster.elapsed_ms() < u64::MAX {
            panic!("deliberate panic: policy bug with {} nodes", nodes.len());
        }
        Readiness::Ready
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(Panics);
