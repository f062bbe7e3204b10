#!/usr/bin/env bash
# The GPU table of the performance issue, in a few minutes on a lent GPU machine. Installs nothing:
# run it from the repository root with a Python that has hyperdarts installed (e.g. .venv).
#   bash benchmarks/gpu_check.sh            # CIFAR search config, orders 1 and 2, eager vs fast
# Writes benchmarks/gpu_check-{eager,fast}.json and prints both tables.
set -euo pipefail
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for mode in eager fast; do
  echo "== $mode =="
  "$PY" benchmarks/search_step.py --device cuda --configs cifar --orders 1 2 \
    --mode "$mode" --repeats "${REPEATS:-20}" --out "benchmarks/gpu_check-$mode.json"
done
