#!/usr/bin/env bash
# The first command on a GPU machine: devices, training in bf16 and fp16 through DALI on the
# GPU, eval agreement, throughput next to PyTorch; one report, runs/gpu_check/report.md.
#
#   bash scripts/gpu_check.sh            # on a GPU node (after EXTRAS=cuda12,test setup)
#   bash scripts/gpu_check.sh --cpu      # a dry run of the same steps on the CPU
#
# Exit code 1 when a check failed; the report says which. Options: scripts/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py "$@"
