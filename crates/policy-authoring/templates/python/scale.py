"""{{name}}: a scale policy (world ``scale`` of
``ray-orchestrator:policy@0.2.0``), asked on the head after every load
sample while serving. Recommends enough replicas for the newest sample's
requests at ``target-requests-per-replica`` (8) each.

The samples are this replica's own load (vLLM's ``/metrics``), oldest
first; the host keeps the window and the previous answer, and keeps the
answer within ``min_replicas..max_replicas``.
"""

import math

from orchestrator_policy import Replicas, ScalePolicy


class Policy(ScalePolicy):
    def recommend(self, input, params):
        current = input.current_replicas
        target = params.float_or("target-requests-per-replica", 8.0)
        if target <= 0:
            return Replicas(current, f"target-requests-per-replica = {target}: give a number above 0")
        if not input.samples:
            return Replicas(current, "no load sample yet")
        newest = input.samples[-1]
        requests = (newest.running + newest.waiting) * max(current, 1)
        return Replicas(math.ceil(requests / target), f"{requests:g} requests at {target:g} a replica")
