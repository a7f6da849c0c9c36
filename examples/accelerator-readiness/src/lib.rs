//! Example custom readiness policy: ready when every node labelled
//! `accelerator=<x>` has joined and at least K of them offer a GPU.
//!
//! Parameters:
//! - `accelerator` (required): the label value to look for, e.g. `a100`.
//! - `label-key` (default `accelerator`): the label's key.
//! - `nodes` (default: the expected node count minus the head): how many
//!   labelled nodes must be alive.
//! - `min-gpu-nodes` (default 1): how many of them must offer a GPU.

use orchestrator_plugin_sdk::log;
use orchestrator_plugin_sdk::readiness::*;

struct AcceleratorReady;

impl ReadinessPolicy for AcceleratorReady {
    fn check(snapshot: &ClusterSnapshot, params: &Params) -> Readiness {
        let Some(accelerator) = params.get("accelerator") else {
            return Readiness::Fail(
                "parameter `accelerator` is missing: set it to the label value to wait for".into(),
            );
        };
        let key = params.get("label-key").unwrap_or("accelerator");
        let default_nodes = snapshot.expected.nodes.saturating_sub(1).max(1);
        let (want, want_gpu) = match (
            params.u32_or("nodes", default_nodes),
            params.u32_or("min-gpu-nodes", 1),
        ) {
            (Ok(n), Ok(k)) => (n, k),
            (Err(e), _) | (_, Err(e)) => return Readiness::Fail(e.to_string()),
        };

        let labelled = |n: &&Node| {
            n.labels
                .iter()
                .any(|kv| kv.key == key && kv.value == accelerator)
        };
        let alive: Vec<&Node> = snapshot
            .nodes
            .iter()
            .filter(|n| n.alive)
            .filter(labelled)
            .collect();
        let with_gpu = alive.iter().filter(|n| n.resources.gpu >= 1.0).count() as u32;
        let dead = snapshot
            .nodes
            .iter()
            .filter(|n| !n.alive)
            .filter(labelled)
            .count();

        log::debug(
            "accelerator readiness",
            &[
                ("accelerator", accelerator),
                ("alive", &alive.len().to_string()),
                ("with-gpu", &with_gpu.to_string()),
            ],
        );

        if alive.len() as u32 >= want && with_gpu >= want_gpu {
            return Readiness::Ready;
        }
        let mut reason = format!(
            "{} of {want} nodes with {key}={accelerator} alive, {with_gpu} of {want_gpu} with a GPU",
            alive.len()
        );
        if dead > 0 {
            reason.push_str(&format!("; {dead} such node(s) died"));
        }
        if snapshot.deadline_ms > 0 && snapshot.elapsed_ms >= snapshot.deadline_ms {
            return Readiness::Fail(format!("deadline passed: {reason}"));
        }
        Readiness::Wait(reason)
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(AcceleratorReady);
