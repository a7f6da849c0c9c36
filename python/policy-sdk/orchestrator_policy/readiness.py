"""Readiness policies: decide when the cluster is ready to serve.

::

    from orchestrator_policy import ReadinessPolicy, Ready, Wait, Fail

    class AllNodes(ReadinessPolicy):
        def check(self, cluster, params):
            alive = cluster.count(alive=True)
            want = params.int_or("nodes", cluster.expected.nodes)
            return Ready() if alive >= want else Wait(f"{alive} of {want} nodes alive")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ._common import Cluster, Params, ParamError, _params


@dataclass(frozen=True)
class Ready:
    """The cluster is ready: launch."""


@dataclass(frozen=True)
class Wait:
    """Not yet; asked again at the next change. ``reason`` is shown."""

    reason: str


@dataclass(frozen=True)
class Fail:
    """Stop waiting: the run fails with ``reason``."""

    reason: str


Readiness = Union[Ready, Wait, Fail]


class ReadinessPolicy:
    """Derive from this and implement ``check``."""

    def check(self, cluster: Cluster, params: Params) -> Readiness:
        raise NotImplementedError("implement check(self, cluster, params)")


def _export(policy_class):
    """The class componentize-py exports for the ``readiness`` world."""
    from wit_world import exports
    from wit_world.imports import types

    policy = policy_class()

    class ReadinessPolicyExport(exports.ReadinessPolicy):
        def check(self, cluster, params):
            try:
                answer = policy.check(Cluster(cluster), _params(params))
            except ParamError as e:
                answer = Fail(str(e))
            if isinstance(answer, Ready):
                return types.Readiness_Ready()
            if isinstance(answer, Wait):
                return types.Readiness_Wait(answer.reason)
            if isinstance(answer, Fail):
                return types.Readiness_Fail(answer.reason)
            raise TypeError(f"check returned {answer!r}: return Ready(), Wait(reason) or Fail(reason)")

    return ReadinessPolicyExport
