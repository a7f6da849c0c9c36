//! Built-in launch policy `vllm`.
//!
//! Builds `vllm serve <model> --host H --port P [--served-model-name N]
//! --tensor-parallel-size T --pipeline-parallel-size P
//! --distributed-executor-backend ray` followed by the user's extra
//! arguments.
//!
//! When the user fixed neither size: T = GPUs of the smallest GPU node,
//! P = number of GPU nodes (vLLM's usual multi-node layout). When one size
//! is fixed, the other uses every GPU it can. A layout the alive nodes
//! cannot hold is refused with `impossible-layout`.
//!
//! With a native group (the native backend: vLLM's own multi-node mode,
//! no Ray) the leader's argv has `--nnodes N --node-rank 0 --master-addr A
//! --master-port P --distributed-executor-backend mp` instead, and each
//! other rank `i` gets `vllm serve <model> ... --nnodes N --node-rank i
//! --master-addr A --master-port P --headless` with the same sizes and
//! extra arguments. vLLM needs the world size (T x P) to be a multiple of
//! the number of nodes; a layout that is not is refused.
//!
//! Parameters (all optional): `program` (default `vllm`), `env.NAME` for
//! each environment variable to set (for example `env.VLLM_HOST_IP`), and
//! `early-launch` (`true`): start vLLM as soon as the head is up, with the
//! layout of the expected topology, while the workers join (the
//! orchestrator relaunches it if the cluster forms differently); in a
//! native group every rank starts as it registers, and vLLM's own
//! rendezvous waits for the others.

use orchestrator_plugin_sdk::launch::*;

/// The `vllm` policy.
pub struct Vllm;

/// Flags the policy sets itself; the user sets them through the serve
/// settings, never in `extra-args`.
const OWNED_FLAGS: &[(&str, &str)] = &[
    ("--tensor-parallel-size", "tensor-parallel-size"),
    ("-tp", "tensor-parallel-size"),
    ("--pipeline-parallel-size", "pipeline-parallel-size"),
    ("-pp", "pipeline-parallel-size"),
    (
        "--distributed-executor-backend",
        "(set by the policy: ray, or mp natively)",
    ),
    ("--nnodes", "(set by the policy from the native group)"),
    ("-n", "(set by the policy from the native group)"),
    ("--node-rank", "(set by the policy from the native group)"),
    ("-r", "(set by the policy from the native group)"),
    ("--master-addr", "(set by the policy from the native group)"),
    ("--master-port", "(set by the policy from the native group)"),
    ("--headless", "(set by the policy for ranks other than 0)"),
    ("--port", "port"),
    ("--host", "host"),
];

impl LaunchPolicy for Vllm {
    fn plan(
        cluster: &Cluster,
        settings: &ServeSettings,
        params: &Params,
    ) -> Result<LaunchPlan, LaunchError> {
        if settings.model.trim().is_empty() {
            return Err(LaunchError::InvalidSettings(
                "serve.model is empty: set it to a model path or name".to_string(),
            ));
        }
        for arg in &settings.extra_args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if let Some((_, setting)) = OWNED_FLAGS.iter().find(|(f, _)| *f == flag) {
                return Err(LaunchError::InvalidSettings(format!(
                    "extra args contain `{flag}`, which the launch policy sets itself; use the serve setting `{setting}` instead"
                )));
            }
        }

        let (tp, pp) = layout(cluster, settings)?;

        let program = params.get("program").unwrap_or("vllm").to_string();
        let mut argv = vec![
            program,
            "serve".to_string(),
            settings.model.clone(),
            "--host".to_string(),
            settings.host.clone(),
            "--port".to_string(),
            settings.port.to_string(),
        ];
        if let Some(name) = &settings.served_model_name {
            argv.push("--served-model-name".to_string());
            argv.push(name.clone());
        }
        let sizes = [
            "--tensor-parallel-size".to_string(),
            tp.to_string(),
            "--pipeline-parallel-size".to_string(),
            pp.to_string(),
        ];
        argv.extend(sizes.iter().cloned());
        let group = settings.native_group.as_ref();
        match group {
            None => argv.extend([
                "--distributed-executor-backend".to_string(),
                "ray".to_string(),
            ]),
            Some(g) => {
                argv.extend([
                    "--distributed-executor-backend".to_string(),
                    "mp".to_string(),
                ]);
                argv.extend(rank_flags(g, 0));
            }
        }
        argv.extend(settings.extra_args.iter().cloned());

        let env: Vec<KeyValue> = params
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("env.").map(|name| KeyValue {
                    key: name.to_string(),
                    value: v.to_string(),
                })
            })
            .collect();
        let early = params
            .bool_or("early-launch", true)
            .map_err(|e| LaunchError::InvalidSettings(e.to_string()))?;
        let ranks = match group {
            None => Vec::new(),
            Some(g) => (1..g.nodes)
                .map(|rank| {
                    let mut argv =
                        vec![argv[0].clone(), "serve".to_string(), settings.model.clone()];
                    argv.extend(sizes.iter().cloned());
                    argv.extend(rank_flags(g, rank));
                    argv.push("--headless".to_string());
                    argv.extend(settings.extra_args.iter().cloned());
                    RankPlan {
                        rank,
                        argv,
                        env: env.clone(),
                    }
                })
                .collect(),
        };
        Ok(LaunchPlan {
            argv,
            env,
            early,
            ranks,
        })
    }
}

/// `--nnodes N --node-rank I --master-addr A --master-port P`.
fn rank_flags(group: &NativeGroup, rank: u32) -> [String; 8] {
    [
        "--nnodes".to_string(),
        group.nodes.to_string(),
        "--node-rank".to_string(),
        rank.to_string(),
        "--master-addr".to_string(),
        group.master_addr.clone(),
        "--master-port".to_string(),
        group.master_port.to_string(),
    ]
}

orchestrator_plugin_sdk::export_launch_policy!(Vllm);

/// Tensor- and pipeline-parallel sizes for the alive GPU nodes.
fn layout(cluster: &Cluster, settings: &ServeSettings) -> Result<(u32, u32), LaunchError> {
    let gpu_nodes: Vec<u32> = cluster
        .nodes()
        .filter(|n| n.alive())
        .map(|n| n.gpu().floor() as u32)
        .filter(|g| *g > 0)
        .collect();
    let total: u32 = gpu_nodes.iter().sum();
    let describe = || {
        format!(
            "the cluster has {total} GPU{} on {} node{}",
            if total == 1 { "" } else { "s" },
            gpu_nodes.len(),
            if gpu_nodes.len() == 1 { "" } else { "s" }
        )
    };
    if total == 0 {
        return Err(LaunchError::ImpossibleLayout(
            "no alive node offers a GPU: start Ray with --num-gpus on the GPU nodes".to_string(),
        ));
    }
    let (tp, pp) = match (
        settings.tensor_parallel_size,
        settings.pipeline_parallel_size,
    ) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(LaunchError::InvalidSettings(
                "tensor-parallel-size and pipeline-parallel-size must be at least 1".to_string(),
            ));
        }
        (Some(tp), Some(pp)) => (tp, pp),
        (Some(tp), None) => (tp, (total / tp).max(1)),
        (None, Some(pp)) => ((total / pp).max(1), pp),
        (None, None) => {
            let smallest = gpu_nodes.iter().copied().min().unwrap_or(1);
            (smallest, gpu_nodes.len() as u32)
        }
    };
    let world = u64::from(tp) * u64::from(pp);
    if world > u64::from(total) {
        return Err(LaunchError::ImpossibleLayout(format!(
            "tensor-parallel-size {tp} x pipeline-parallel-size {pp} needs {world} GPUs but {}; add GPU nodes or lower the sizes",
            describe()
        )));
    }
    if let Some(group) = &settings.native_group
        && (group.nodes == 0 || world % u64::from(group.nodes) != 0)
    {
        return Err(LaunchError::ImpossibleLayout(format!(
            "tensor-parallel-size {tp} x pipeline-parallel-size {pp} = {world} is not a multiple of the group's {} nodes: vLLM's native multi-node mode runs the same number of ranks on every node",
            group.nodes
        )));
    }
    Ok((tp, pp))
}
