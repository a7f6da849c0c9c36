"""Launch policies: the serving command for the ready cluster.

``plan(cluster, settings, params)`` returns a ``LaunchPlan`` or raises
``ImpossibleLayout`` / ``InvalidSettings`` / ``LaunchFailed``. ``settings``
holds ``model``, ``served_model_name``, ``host``, ``port``, ``extra_args``,
``tensor_parallel_size``, ``pipeline_parallel_size`` (None when unset) and
``native_group`` (None with Ray; with the native backend it has ``nodes``,
``master_addr`` and ``master_port``, and the plan gives every other rank's
argv in ``ranks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ._common import Cluster, Params, ParamError, _params


@dataclass
class RankPlan:
    """What one rank other than the leader runs (the native backend)."""

    rank: int
    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class LaunchPlan:
    """The serving process: its argv, extra environment, whether it may
    start for the expected layout while the workers join (``early``), and
    with a native group every other rank's plan (``ranks``)."""

    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    early: bool = False
    ranks: List[RankPlan] = field(default_factory=list)


class ImpossibleLayout(Exception):
    """The cluster cannot hold the layout asked for."""


class InvalidSettings(Exception):
    """The serve settings are wrong."""


class LaunchFailed(Exception):
    """Anything else."""


class LaunchPolicy:
    """Derive from this and implement ``plan``."""

    def plan(self, cluster: Cluster, settings, params: Params) -> LaunchPlan:
        raise NotImplementedError("implement plan(self, cluster, settings, params)")


def _export(policy_class):
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import types

    policy = policy_class()

    class LaunchPolicyExport(exports.LaunchPolicy):
        def plan(self, cluster, settings, params):
            try:
                answer = policy.plan(Cluster(cluster), settings, _params(params))
            except ImpossibleLayout as e:
                raise Err(types.LaunchError_ImpossibleLayout(str(e)))
            except (InvalidSettings, ParamError) as e:
                raise Err(types.LaunchError_InvalidSettings(str(e)))
            except LaunchFailed as e:
                raise Err(types.LaunchError_Other(str(e)))
            if not isinstance(answer, LaunchPlan):
                raise TypeError(f"plan returned {answer!r}: return a LaunchPlan")
            return types.LaunchPlan(
                argv=[str(a) for a in answer.argv],
                env=[types.KeyValue(key=k, value=str(v)) for k, v in answer.env.items()],
                early=bool(answer.early),
                ranks=[
                    types.RankPlan(
                        rank=int(r.rank),
                        argv=[str(a) for a in r.argv],
                        env=[types.KeyValue(key=k, value=str(v)) for k, v in r.env.items()],
                    )
                    for r in answer.ranks
                ],
            )

    return LaunchPolicyExport
