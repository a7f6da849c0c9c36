"""{{name}}: a node-health policy (world ``node-health`` of
``ray-orchestrator:policy@0.2.0``), run on every node at the probe
interval. Unhealthy on any critical XID, else healthy.

The answer is ``NodeHealthy()``, ``NodeDegraded(reason)`` (shown, still
used) or ``Unhealthy(reason)`` (not counted toward readiness; the server
is moved off the node; a worker exits 3 after its grace).
"""

from orchestrator_policy import NodeHealthPolicy, NodeHealthy, Unhealthy


class Policy(NodeHealthPolicy):
    def judge(self, readings, params):
        for gpu in readings.gpus:
            if gpu.xids:
                return Unhealthy(f"GPU {gpu.index} XID {gpu.xids[-1].xid}")
        return NodeHealthy()
