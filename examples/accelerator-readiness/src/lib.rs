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
    fn check(cluster: &Cluster, params: &Params) -> Readiness {
        let Some(accelerator) = params.get("accelerator") else {
            return Readiness::Fail(
                "parameter `accelerator` is missing: set it to the label value to wait for".into(),
            );
        };
        let key = params.get("label-key").unwrap_or("accelerator");
        let default_nodes = cluster.expected().nodes.saturating_sub(1).max(1);
        let (want, want_gpu) = match (
            params.u32_or("nodes", default_nodes),
            params.u32_or("min-gpu-nodes", 1),
        ) {
            (Ok(n), Ok(k)) => (n, k),
            (Err(e), _) | (_, Err(e)) => return Readiness::Fail(e.to_string()),
        };

        // Reads every node and its labels (`Cluster::totals` with
        // `Filter::label` would answer the same without the table).
        let (mut alive, mut with_gpu, mut dead) = (0u32, 0u32, 0u32);
        for node in cluster.nodes() {
            if node.label(key) != Some(accelerator) {
                continue;
            }
            match (node.alive(), node.gpu() >= 1.0) {
                (true, true) => (alive, with_gpu) = (alive + 1, with_gpu + 1),
                (true, false) => alive += 1,
                (false, _) => dead += 1,
            }
        }

        log::debug(
            "accelerator readiness",
            &[
                ("accelerator", accelerator),
                ("alive", &alive.to_string()),
                ("with-gpu", &with_gpu.to_string()),
            ],
        );

        if alive >= want && with_gpu >= want_gpu {
            return Readiness::Ready;
        }
        let mut reason = format!(
            "{alive} of {want} nodes with {key}={accelerator} alive, {with_gpu} of {want_gpu} with a GPU"
        );
        if dead > 0 {
            reason.push_str(&format!("; {dead} such node(s) died"));
        }
        if cluster.deadline_passed() {
            return Readiness::Fail(format!("deadline passed: {reason}"));
        }
        Readiness::Wait(reason)
    }
}

orchestrator_plugin_sdk::export_readiness_policy!(AcceleratorReady);
