"""{{name}}: a health policy (world ``health`` of
``ray-orchestrator:policy@0.2.0``). Restarts the serving process when it
exited (after ``backoff-ms``, default 1000), else healthy.

The answer is ``Healthy()``, ``Degraded(reason)``,
``Restart(reason, backoff_ms)`` or ``Shutdown(exit_code, reason)`` (the
orchestrator stops and exits with that code, so Kubernetes restarts the
pod).
"""

from orchestrator_policy import HealthPolicy, Healthy, Restart
from orchestrator_policy.health import server_exited


class Policy(HealthPolicy):
    def evaluate(self, snapshot, cluster, params):
        backoff_ms = params.int_or("backoff-ms", 1000)
        if server_exited(snapshot):
            return Restart("the serving process exited", backoff_ms)
        return Healthy()
