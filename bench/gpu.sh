#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu.py): every GPU number of the project in one command.
#   bash bench/gpu.sh            on a GPU machine: full-size shapes, <= 9 minutes on one H100/H200
#   bash bench/gpu.sh --dry-run  the same script on the CPU with tiny shapes (CI runs it: it cannot rot)
# Other flags go to bench/gpu.py (--out DIR, --only transformer,vae,..., --budget-s N, --strict).
# Python: the project's .venv when there is one, else $PYTHON or python3 (a lent GPU machine has its own
# CUDA torch; bench/gpu_wheels.sh prepares the wheels of what it lacks, to install with PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu.py "$@"
