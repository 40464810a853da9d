#!/usr/bin/env bash
# Runs bench/torch_baseline.py in a virtual environment with PyTorch from PyPI, creating it on first
# use in target/torch-venv (or using $GNMT_TORCH_VENV if set). Arguments go to the script.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${GNMT_TORCH_VENV:-$here/../target/torch-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing PyTorch (CPU) into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet torch >&2
fi
exec "$venv/bin/python" "$here/torch_baseline.py" "$@"
