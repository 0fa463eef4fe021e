#!/usr/bin/env bash
# Creates .venv (if missing) and installs resnet_jax with its test tools into it.
# Source it (`. scripts/setup.sh`) to stay in the environment. On a GPU machine,
# EXTRAS=cuda12,test installs jax[cuda12] as well; EXTRAS= (empty) installs resnet_jax alone,
# as scripts/demo.sh does. PYTHON=python3.12 picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
# jax, flax and orbax-checkpoint need Python 3.11 or newer: say so before pip fails obscurely.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    found=$("$PYTHON" -c 'import platform; print("Python", platform.python_version())' 2>/dev/null) \
        || found="not a Python that runs here"
    echo "error: resnet_jax needs Python 3.11 or newer, but '$PYTHON' is $found: pick another with e.g. PYTHON=python3.12 bash scripts/demo.sh (or scripts/test.sh)" >&2
    return 2 2>/dev/null || exit 2
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: .venv was made with $(.venv/bin/python --version 2>&1), older than 3.11: delete .venv and run again" >&2
    return 2 2>/dev/null || exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# With jax[cuda12], PyTorch (the tests' and the benchmark's reference) comes from PyTorch's
# CUDA 12 index, before the extras: PyPI's Linux wheels are CUDA 13 builds, which a CUDA 12
# driver cannot run. TORCH_INDEX picks another index.
EXTRAS=${EXTRAS-test}
if [[ ",$EXTRAS," == *",cuda12,"* ]] && ! python -c 'import torch' 2>/dev/null; then
    python -m pip install --quiet torch \
        --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu126}"
fi
python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
set +euo pipefail
