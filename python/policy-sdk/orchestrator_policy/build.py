"""Builds a Python policy into a WebAssembly component.

    python -m orchestrator_policy.build my_policy.py -o my_policy.wasm

The policy module must define one class deriving from ReadinessPolicy,
LaunchPolicy, HealthPolicy, NodeHealthPolicy or ScalePolicy; its world follows from the
base class. componentize-py (pinned by this SDK) bundles CPython, the SDK
and the module into a component of ``ray-orchestrator:policy``: a health
policy at 0.3.0, the others at 0.2.0 (0.3.0 changed only the health world).
``--wit`` names the folder holding the WIT packages ``policy-0.2.0`` and
``policy-0.3.0`` (default: the copy inside this package, links to ``wit/``
in the repository).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import health, launch, node_health, readiness, scale

SDK_DIR = Path(__file__).resolve().parent.parent
DEFAULT_WIT = Path(__file__).resolve().parent / "wit"
# world -> the contract version the SDK builds it at
VERSIONS = {"health": "0.3.0"}
DEFAULT_VERSION = "0.2.0"

# base class -> (world, SDK module, the export's class name)
WORLDS = [
    (readiness.ReadinessPolicy, "readiness", "readiness", "ReadinessPolicy"),
    (launch.LaunchPolicy, "launch", "launch", "LaunchPolicy"),
    (health.HealthPolicy, "health", "health", "HealthPolicy"),
    (node_health.NodeHealthPolicy, "node-health", "node_health", "NodeHealthPolicy"),
    (scale.ScalePolicy, "scale", "scale", "ScalePolicy"),
]


class BuildError(Exception):
    pass


def find_policy(path: Path):
    """(class name, world, SDK module, export name) of the one policy class."""
    if not path.is_file():
        raise BuildError(f"{path}: no such file; name the policy's .py file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the author's code: say where it failed
        raise BuildError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    found = []
    for name, value in vars(module).items():
        if not inspect.isclass(value) or value.__module__ != module.__name__:
            continue
        for base, world, sdk_module, export in WORLDS:
            if issubclass(value, base):
                found.append((name, world, sdk_module, export))
    if len(found) != 1:
        named = ", ".join(f"{n} ({w})" for n, w, _, _ in found) or "none"
        raise BuildError(
            f"{path} must define exactly one policy class deriving from ReadinessPolicy, "
            f"LaunchPolicy, HealthPolicy, NodeHealthPolicy or ScalePolicy; found {named}"
        )
    return found[0]


def componentize_py() -> list:
    exe = Path(sys.executable).parent / "componentize-py"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from componentize_py import script; sys.exit(script())"]


def build(policy: Path, output: Path, wit: Path) -> str:
    """Builds ``policy`` into ``output``; returns its world."""
    name, world, sdk_module, export = find_policy(policy)
    version = VERSIONS.get(world, DEFAULT_VERSION)
    package = wit / f"policy-{version}"
    if not (package / "policies.wit").is_file():
        raise BuildError(
            f"{wit} holds no WIT package policy-{version}; pass --wit DIR "
            "(the wit/ folder of the orchestrator's repository)"
        )
    with tempfile.TemporaryDirectory(prefix="orchestrator-policy-") as tmp:
        app = Path(tmp) / "orchestrator_policy_app.py"
        app.write_text(
            "import importlib\n"
            f"from orchestrator_policy import {sdk_module} as _world\n"
            f"_module = importlib.import_module({policy.stem!r})\n"
            f"{export} = _world._export(_module.{name})\n"
        )
        command = componentize_py() + [
            "-d", str(package),
            "-w", f"ray-orchestrator:policy/{world}@{version}",
            "componentize",
            "-p", tmp,
            "-p", str(policy.resolve().parent),
            "-p", str(SDK_DIR),
            "orchestrator_policy_app",
            "-o", str(output),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"componentize-py failed:\n{done.stdout}{done.stderr}")
    return world


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator_policy.build",
        description="Build a Python policy into a WebAssembly component.",
    )
    parser.add_argument("policy", type=Path, help="the policy's .py file")
    parser.add_argument("-o", "--output", type=Path, help="the component (default: POLICY.wasm)")
    parser.add_argument("--wit", type=Path, default=Path(os.environ.get("ORCHESTRATOR_WIT", DEFAULT_WIT)),
                        help=f"the folder holding the WIT packages (default: {DEFAULT_WIT})")
    args = parser.parse_args(argv)
    output = args.output or args.policy.with_suffix(".wasm")
    try:
        world = build(args.policy, output, args.wit)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"built the {world} policy {output} ({output.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
