#!/usr/bin/env bash
# Sets up .venv and runs the checks: ruff, then the unit suite in TEST_WORKERS (default 2)
# pytest-xdist workers (CPU, 2 cores: about 5 minutes without an XLA cache, as on a fresh
# machine or in CI; the cache of an earlier run is ~/.cache/resnet_jax/jax-tests or
# $RESNET_JAX_TEST_CACHE), then the GPU compile tests (tests/gpu_compile: the real steps
# compiled for NVIDIA GPUs by XLA's CUDA plugin, kept in .venv-gpu-compile/; about 2 minutes
# more). Arguments go to the unit suite's pytest; GPU_COMPILE_TESTS=0 skips the second stage.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
ruff check .
start=$SECONDS
python -m pytest -q -n "${TEST_WORKERS:-2}" --ignore=tests/gpu_compile "$@"
echo "unit suite: $((SECONDS - start)) s"
if [ "${GPU_COMPILE_TESTS:-1}" != 0 ]; then
    . scripts/gpu_compile_env.sh
    set -euo pipefail
    start=$SECONDS
    # Programs compiled for compile-only GPUs cannot be read back from JAX's cache: none written.
    PYTHONPATH="$GPU_COMPILE_PATH" JAX_PLATFORMS=cpu JAX_ENABLE_COMPILATION_CACHE=false \
        python -m pytest -q -n "${TEST_WORKERS:-2}" tests/gpu_compile
    echo "GPU compile tests: $((SECONDS - start)) s"
fi
