"""{{name}}: a launch policy (world ``launch`` of
``ray-orchestrator:policy@0.2.0``). Serves with vLLM over Ray: tensor
parallel over the GPUs of the smallest GPU node (or the
``tensor_parallel_size`` setting), pipeline parallel over the GPU nodes.

The answer is a ``LaunchPlan(argv, env, early)`` or an exception:
``ImpossibleLayout``, ``InvalidSettings`` or ``LaunchFailed``, which the
orchestrator reports without launching.
"""

from orchestrator_policy import ImpossibleLayout, LaunchPlan, LaunchPolicy


class Policy(LaunchPolicy):
    def plan(self, cluster, settings, params):
        gpu_nodes = [int(n.gpu) for n in cluster.nodes() if n.alive and n.gpu >= 1.0]
        if not gpu_nodes:
            raise ImpossibleLayout("no alive node offers a GPU")
        smallest = min(gpu_nodes)
        tp = settings.tensor_parallel_size or smallest
        if tp > smallest:
            raise ImpossibleLayout(
                f"tensor-parallel-size {tp} needs {tp} GPUs on a node; "
                f"the smallest GPU node has {smallest}"
            )
        pp = settings.pipeline_parallel_size or len(gpu_nodes)
        argv = [
            "vllm", "serve", settings.model,
            "--host", settings.host, "--port", str(settings.port),
            "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--distributed-executor-backend", "ray",
        ]
        return LaunchPlan(argv=argv, env={}, early=False)
