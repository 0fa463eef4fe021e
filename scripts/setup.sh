#!/usr/bin/env bash
# Creates .venv (if missing) and installs resnet_jax with its test tools into it.
# Source it (`. scripts/setup.sh`) to stay in the environment. On a GPU machine,
# EXTRAS=cuda12,test installs jax[cuda12] as well.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[${EXTRAS:-test}]"
set +euo pipefail
