#!/usr/bin/env bash
# The first command on a GPU machine: devices, DALI, training in bf16 and fp16, eval agreement,
# throughput next to PyTorch; one report, runs/gpu_check/report.md (exit code 1 if a part failed).
#
#   bash scripts/gpu_check.sh --quick    # at most 7 minutes on one GPU (a short GPU window)
#   bash scripts/gpu_check.sh            # the full check, for a real node
#   bash scripts/gpu_check.sh --cpu      # a dry run of the same steps on the CPU
#
# Python: PY, else .venv/bin/python when the checkout has one (EXTRAS=cuda12,test . scripts/setup.sh),
# else python3. scripts/gpu_check.py itself puts the checkout and the small wheels copied into
# .whl/ (ml_collections) on the path, for a machine where nothing can be installed
# (docs/benchmarks.md). Options: python scripts/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_check.py "$@"
