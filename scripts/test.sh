#!/usr/bin/env bash
# Sets up .venv and runs the checks: ruff, then the test suite in TEST_WORKERS (default 2)
# pytest-xdist workers (CPU, 2 cores: about 5 minutes without an XLA cache, as on a fresh
# machine or in CI; 6.5 in one process; the cache of an earlier run is
# ~/.cache/resnet_jax/jax-tests or $RESNET_JAX_TEST_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
ruff check .
python -m pytest -q -n "${TEST_WORKERS:-2}" "$@"
