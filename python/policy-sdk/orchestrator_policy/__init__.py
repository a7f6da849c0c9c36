"""Policies for the Ray/vLLM orchestrator, in Python.

A policy is one class deriving from the base class of its world:

=============  =====================================  ==========================
world          base class                             method
=============  =====================================  ==========================
readiness      ``orchestrator_policy.ReadinessPolicy``  ``check(cluster, params)``
launch         ``orchestrator_policy.LaunchPolicy``     ``plan(cluster, settings, params)``
health         ``orchestrator_policy.HealthPolicy``     ``evaluate(snapshot, cluster, params)``
node-health    ``orchestrator_policy.NodeHealthPolicy`` ``judge(readings, params)``
scale          ``orchestrator_policy.ScalePolicy``      ``recommend(input, params)``
=============  =====================================  ==========================

Build it into a component with one command::

    python -m orchestrator_policy.build my_policy.py -o my_policy.wasm

(componentize-py bundles CPython and this SDK; the world is found from the
base class.) Then ``orchestrator plugin check|run|test my_policy.wasm``.

Inside the orchestrator a policy runs sandboxed: no files, network,
environment or clock; every call has a deadline and a memory cap.
Everything it may judge by is in its input.
"""

from ._common import (
    Cluster,
    Node,
    Params,
    ParamError,
    Totals,
    log,
)
from .readiness import ReadinessPolicy, Ready, Wait, Fail
from .launch import (
    LaunchPolicy,
    LaunchPlan,
    RankPlan,
    ImpossibleLayout,
    InvalidSettings,
    LaunchFailed,
)
from .health import HealthPolicy, Healthy, Degraded, Restart, Shutdown
from .node_health import NodeHealthPolicy, NodeHealthy, NodeDegraded, Unhealthy
from .scale import ScalePolicy, Replicas

__all__ = [
    "Cluster", "Node", "Params", "ParamError", "Totals", "log",
    "ReadinessPolicy", "Ready", "Wait", "Fail",
    "LaunchPolicy", "LaunchPlan", "RankPlan", "ImpossibleLayout", "InvalidSettings", "LaunchFailed",
    "HealthPolicy", "Healthy", "Degraded", "Restart", "Shutdown",
    "NodeHealthPolicy", "NodeHealthy", "NodeDegraded", "Unhealthy",
    "ScalePolicy", "Replicas",
]
