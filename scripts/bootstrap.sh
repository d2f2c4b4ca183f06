#!/usr/bin/env bash
# Creates .venv and installs the project with every extra the demo and the tests need.
# Idempotent: reinstalls only when pyproject.toml or setup.py changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MAGMA_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.magma-installed"
WANT=$(cat pyproject.toml setup.py scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
echo "[bootstrap] creating $VENV and installing (a few minutes on a fresh machine)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU torch first, pinned, so no extra resolves to a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[model,sim,data,ros,plots,dev]"
echo "$WANT" > "$STAMP"
echo "[bootstrap] done" >&2
