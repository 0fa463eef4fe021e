#!/usr/bin/env bash
# Sets up .venv and runs the checks: ruff, then the test suite (CPU, 2 cores: about 6.5 minutes
# without an XLA cache, as on a fresh machine or in CI; about 4.5 with the cache of an earlier
# run in ~/.cache/resnet_jax/jax-tests or $RESNET_JAX_TEST_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
ruff check .
python -m pytest -q "$@"
