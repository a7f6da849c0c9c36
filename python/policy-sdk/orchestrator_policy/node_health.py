"""Node-health policies: judge one node's own readings (GPUs, host, Ray).

``judge(readings, params)`` gets the node's readings (fields as the WIT's
``node-readings``: ``gpus`` (each with ``index``, ``xids``, ``remap_failed``,
...), ``temp_dir_free_bytes``, ``raylet_alive``, ...) and returns
``NodeHealthy()``, ``NodeDegraded(reason)`` or ``Unhealthy(reason)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ._common import Params, ParamError, _params


@dataclass(frozen=True)
class NodeHealthy:
    """The node is fine."""


@dataclass(frozen=True)
class NodeDegraded:
    """Shown; the node still counts."""

    reason: str


@dataclass(frozen=True)
class Unhealthy:
    """The node does not count toward readiness; the server moves off it."""

    reason: str


NodeVerdict = Union[NodeHealthy, NodeDegraded, Unhealthy]


class NodeHealthPolicy:
    """Derive from this and implement ``judge``."""

    def judge(self, readings, params: Params) -> NodeVerdict:
        raise NotImplementedError("implement judge(self, readings, params)")


def _export(policy_class):
    from wit_world import exports
    from wit_world.imports import types

    policy = policy_class()

    class NodeHealthPolicyExport(exports.NodeHealthPolicy):
        def judge(self, readings, params):
            try:
                answer = policy.judge(readings, _params(params))
            except ParamError as e:
                answer = NodeDegraded(str(e))
            if isinstance(answer, NodeHealthy):
                return types.NodeVerdict_Healthy()
            if isinstance(answer, NodeDegraded):
                return types.NodeVerdict_Degraded(answer.reason)
            if isinstance(answer, Unhealthy):
                return types.NodeVerdict_Unhealthy(answer.reason)
            raise TypeError(f"judge returned {answer!r}: return NodeHealthy(), NodeDegraded or Unhealthy")

    return NodeHealthPolicyExport
