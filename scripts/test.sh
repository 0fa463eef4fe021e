#!/usr/bin/env bash
# Sets up .venv and runs the checks: ruff, then the test suite (CPU, ~N minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
ruff check .
python -m pytest -q "$@"
