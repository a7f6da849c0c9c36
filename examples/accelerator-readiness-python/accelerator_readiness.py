"""Example custom readiness policy, in Python: ready when every node
labelled ``accelerator=<x>`` has joined and at least K of them offer a GPU.
The same policy as ``examples/accelerator-readiness`` (Rust), answering
the same cases (``examples/accelerator-readiness/cases``).

Parameters:
- ``accelerator`` (required): the label value to look for, e.g. ``a100``.
- ``label-key`` (default ``accelerator``): the label's key.
- ``nodes`` (default: the expected node count minus the head): how many
  labelled nodes must be alive.
- ``min-gpu-nodes`` (default 1): how many of them must offer a GPU.

Build: ``python -m orchestrator_policy.build accelerator_readiness.py``.
"""

from orchestrator_policy import Fail, ReadinessPolicy, Ready, Wait, log


class AcceleratorReady(ReadinessPolicy):
    def check(self, cluster, params):
        accelerator = params.get("accelerator")
        if accelerator is None:
            return Fail("parameter `accelerator` is missing: set it to the label value to wait for")
        key = params.str_or("label-key", "accelerator")
        want = params.int_or("nodes", max(cluster.expected.nodes - 1, 1))
        want_gpu = params.int_or("min-gpu-nodes", 1)

        alive = with_gpu = dead = 0
        for node in cluster.nodes():
            if node.label(key) != accelerator:
                continue
            if not node.alive:
                dead += 1
            else:
                alive += 1
                if node.gpu >= 1.0:
                    with_gpu += 1

        log("debug", "accelerator readiness", accelerator=accelerator,
            alive=str(alive), with_gpu=str(with_gpu))

        if alive >= want and with_gpu >= want_gpu:
            return Ready()
        reason = (f"{alive} of {want} nodes with {key}={accelerator} alive, "
                  f"{with_gpu} of {want_gpu} with a GPU")
        if dead > 0:
            reason += f"; {dead} such node(s) died"
        if cluster.deadline_passed:
            return Fail(f"deadline passed: {reason}")
        return Wait(reason)
