"""Health policies: judge the service, say what to do about it.

``evaluate(snapshot, cluster, params)`` gets the health snapshot (fields as
contract 0.3.0's ``health-snapshot``: ``server``, ``health_probe``,
``generation_probe``, ``restarts``, ``changes``, ..., and the server's start
rank by rank: ``stages``, ``stall`` (a rank past its stage's deadline, with
its ``top_frames``) and ``last_failure`` (with ``identical``: failed starts
in a row with the same cause)) and returns
``Healthy()``, ``Degraded(reason)``, ``Restart(reason, backoff_ms)`` or
``Shutdown(exit_code, reason)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ._common import Cluster, Params, ParamError, _params


@dataclass(frozen=True)
class Healthy:
    """All is well."""


@dataclass(frozen=True)
class Degraded:
    reason: str


@dataclass(frozen=True)
class Restart:
    """Restart the serving process after ``backoff_ms``."""

    reason: str
    backoff_ms: int = 1000


@dataclass(frozen=True)
class Shutdown:
    """Stop everything; the orchestrator exits with ``exit_code``."""

    exit_code: int
    reason: str


HealthVerdict = Union[Healthy, Degraded, Restart, Shutdown]


class HealthPolicy:
    """Derive from this and implement ``evaluate``."""

    def evaluate(self, snapshot, cluster: Cluster, params: Params) -> HealthVerdict:
        raise NotImplementedError("implement evaluate(self, snapshot, cluster, params)")


def server_exited(snapshot) -> bool:
    """Whether the serving process has exited."""
    from wit_world.imports import types

    return isinstance(snapshot.server, types.ServerState_Exited)


def _export(policy_class):
    from wit_world import exports
    from wit_world.imports import types

    policy = policy_class()

    class HealthPolicyExport(exports.HealthPolicy):
        def evaluate(self, snapshot, cluster, params):
            try:
                answer = policy.evaluate(snapshot, Cluster(cluster), _params(params))
            except ParamError as e:
                answer = Shutdown(2, str(e))
            if isinstance(answer, Healthy):
                return types.HealthVerdict_Healthy()
            if isinstance(answer, Degraded):
                return types.HealthVerdict_Degraded(answer.reason)
            if isinstance(answer, Restart):
                return types.HealthVerdict_Restart(
                    types.RestartAction(reason=answer.reason, backoff_ms=int(answer.backoff_ms)))
            if isinstance(answer, Shutdown):
                return types.HealthVerdict_Shutdown(
                    types.ShutdownAction(exit_code=int(answer.exit_code), reason=answer.reason))
            raise TypeError(f"evaluate returned {answer!r}: return Healthy(), Degraded, Restart or Shutdown")

    return HealthPolicyExport
