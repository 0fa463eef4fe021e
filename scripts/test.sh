#!/usr/bin/env bash
# Sets up .venv and runs the checks: ruff, then the test suite (CPU: about 6 minutes on 2 cores
# with the XLA cache of an earlier run in ~/.cache/resnet_jax/jax-tests, about 14 without).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
ruff check .
python -m pytest -q "$@"
