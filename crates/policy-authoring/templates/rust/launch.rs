//! {{name}}: a launch policy (world `launch` of
//! `ray-orchestrator:policy@0.2.0`). Serves with vLLM over Ray: tensor
//! parallel over the GPUs of the smallest GPU node (or the
//! `tensor-parallel-size` setting), pipeline parallel over the GPU nodes.
//!
//! The answer is a `LaunchPlan` (argv, extra environment, and `early`:
//! whether the server may start for the expected layout while the workers
//! join) or a `LaunchError` (`ImpossibleLayout`, `InvalidSettings`,
//! `Other`), which the orchestrator reports without launching.

use orchestrator_plugin_sdk::launch::*;

/// The policy.
pub struct Policy;

impl LaunchPolicy for Policy {
    fn plan(
        cluster: &Cluster,
        settings: &ServeSettings,
        _params: &Params,
    ) -> Result<LaunchPlan, LaunchError> {
        let gpu_nodes: Vec<u32> = cluster
            .nodes()
            .filter(|n| n.alive() && n.gpu() >= 1.0)
            .map(|n| n.gpu().floor() as u32)
            .collect();
        let Some(smallest) = gpu_nodes.iter().copied().min() else {
            return Err(LaunchError::ImpossibleLayout(
                "no alive node offers a GPU".to_string(),
            ));
        };
        let tp = settings.tensor_parallel_size.unwrap_or(smallest);
        if tp > smallest {
            return Err(LaunchError::ImpossibleLayout(format!(
                "tensor-parallel-size {tp} needs {tp} GPUs on a node; the smallest GPU node has {smallest}"
            )));
        }
        let pp = settings
            .pipeline_parallel_size
            .unwrap_or(gpu_nodes.len() as u32);
        let argv = [
            "vllm",
            "serve",
            &settings.model,
            "--host",
            &settings.host,
            "--port",
            &settings.port.to_string(),
            "--tensor-parallel-size",
            &tp.to_string(),
            "--pipeline-parallel-size",
            &pp.to_string(),
            "--distributed-executor-backend",
            "ray",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Ok(LaunchPlan {
            argv,
            env: vec![],
            early: false,
            ranks: vec![],
        })
    }
}

orchestrator_plugin_sdk::export_launch_policy!(Policy);
