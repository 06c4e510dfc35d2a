#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install gifindex with its test extras.
# torch/torchvision are installed first at the versions this workplace keeps on disk (no large download);
# elsewhere any torch >= 2.10 works: set GIFINDEX_TORCH_SPEC="torch torchvision" to take the latest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${GIFINDEX_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet ${GIFINDEX_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
"$VENV/bin/python" -m pip install --quiet -e '.[test]'
echo "gifindex installed in $VENV"
