#!/usr/bin/env bash
# Source after scripts/setup.sh: puts XLA's CUDA plugin and ptxas (pyproject's gpu-compile
# extra) in .venv-gpu-compile/ (once), outside .venv, and exports GPU_COMPILE_PATH for
# PYTHONPATH. Only the compile tests and scripts/benchmark_compiled.py put it on their path:
# with the plugin importable and no GPU, JAX probes for CUDA and warns at every start-up.
# The plugin's version is the installed jaxlib's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GPU_COMPILE_PATH="$(pwd)/.venv-gpu-compile"
requirements=$(python - <<'PY'
import tomllib

import jaxlib

extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for requirement in extra["gpu-compile"]:
    name = requirement.split("=")[0].split(">")[0]
    print(f"{name}=={jaxlib.__version__}" if name.startswith("jax-cuda") else requirement)
PY
)
stamp="$GPU_COMPILE_PATH/.requirements"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$requirements" ]; then
    echo "installing XLA's CUDA plugin and ptxas into .venv-gpu-compile (about 560 MB, once)"
    rm -rf "$GPU_COMPILE_PATH"
    # shellcheck disable=SC2086  one requirement a word
    python -m pip install --quiet --no-deps --target "$GPU_COMPILE_PATH" $requirements
    echo "$requirements" > "$stamp"
fi
export GPU_COMPILE_PATH
set +euo pipefail
