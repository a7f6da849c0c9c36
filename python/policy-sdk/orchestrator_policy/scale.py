"""Scale policies: recommend the serving replicas the load needs.

``recommend(input, params)`` gets the window of load (fields as the WIT's
``scale-input``: ``samples`` oldest first, each with ``at_ms``,
``running``, ``waiting``, ``kv_cache_usage``,
``generation_tokens_per_second``, ``prompt_tokens_per_second``; and
``window_ms``, ``interval_ms``, ``current_replicas``, ``min_replicas``,
``max_replicas``, ``previous_desired``, ``since_change_ms``) and returns
``Replicas(desired, reason)``. The host keeps the window and the previous
answer, so the policy keeps no state; it keeps the answer within
``min_replicas..max_replicas``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import Params, ParamError, _params


@dataclass(frozen=True)
class Replicas:
    """The replicas the load needs, and why."""

    desired: int
    reason: str


class ScalePolicy:
    """Derive from this and implement ``recommend``."""

    def recommend(self, input, params: Params) -> Replicas:
        raise NotImplementedError("implement recommend(self, input, params)")


def _export(policy_class):
    from wit_world import exports
    from wit_world.imports import types

    policy = policy_class()

    class ScalePolicyExport(exports.ScalePolicy):
        def recommend(self, input, params):
            try:
                answer = policy.recommend(input, _params(params))
            except ParamError as e:
                answer = Replicas(input.current_replicas, f"holding: {e}")
            if not isinstance(answer, Replicas):
                raise TypeError(f"recommend returned {answer!r}: return Replicas(desired, reason)")
            desired = max(0, min(int(answer.desired), 2**32 - 1))
            return types.ScaleRecommendation(desired, str(answer.reason))

    return ScalePolicyExport
