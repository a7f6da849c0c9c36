"""{{name}}: a readiness policy (world ``readiness`` of
``ray-orchestrator:policy@0.2.0``). Ready when every expected node is
alive. Parameter ``nodes`` (default: the expected node count) overrides
how many must be.

The answer is ``Ready()``, ``Wait(reason)`` (asked again at the next
membership change) or ``Fail(reason)`` (stop waiting).
"""

from orchestrator_policy import ReadinessPolicy, Ready, Wait


class Policy(ReadinessPolicy):
    def check(self, cluster, params):
        want = params.int_or("nodes", cluster.expected.nodes)
        # Counted by the host, without copying the nodes.
        alive = cluster.count(alive=True)
        if alive >= want:
            return Ready()
        return Wait(f"{alive} of {want} nodes alive")
