#!/usr/bin/env bash
# The fault drill (tools/fault_drill.py): kills, corrupt checkpoints and bundles, signals and
# read-only directories on a tiny 2-rank CPU run; prints a table, one row per case, each
# ending in "nothing lost". About 5 minutes on 2 cores.
#   tools/fault_drill.sh [--out runs/fault_drill] [--seed 0]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PYTHON"):$PATH"
exec "$PYTHON" tools/fault_drill.py "$@"
