#!/usr/bin/env bash
# The GPU table of the performance issue, in a few minutes on a lent GPU machine. Installs nothing:
# run it from the repository root with a Python that has hyperdarts installed (e.g. .venv).
#   bash benchmarks/gpu_check.sh              # CIFAR search config, orders 1 and 2, every mode
#   MODES="fast cudagraphs" bash benchmarks/gpu_check.sh
# Compiling takes minutes per mode: under a per-command time limit, run MODES="eager fast" and
# MODES="compiled cudagraphs" as two calls (REPEATS=10 shortens each table).
# Modes: eager (plain per-edge loop), fast (shared + grouped ops), compiled (+ torch.compile),
# cudagraphs (+ torch.compile mode reduce-overhead). A mode that fails is reported and skipped.
# Then batch 256 with checkpoint_cells, first order: CUDA's measured peak next to
# benchmarks/memory.py's estimate (CPU, no GPU needed), to calibrate the estimate's margin.
# Writes benchmarks/gpu_check-<mode>.json, gpu_check-memory.json, memory-256.json; prints tables.
set -uo pipefail
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
git rev-parse --short HEAD 2>/dev/null || true
for mode in ${MODES:-eager fast compiled cudagraphs}; do
  echo "== $mode =="
  "$PY" benchmarks/search_step.py --device cuda --configs cifar --orders 1 2 \
    --mode "$mode" --repeats "${REPEATS:-20}" --out "benchmarks/gpu_check-$mode.json" \
    || echo "mode $mode failed (exit $?)"
done
echo "== memory: batch 256, checkpoint_cells, first order (CUDA peak, then the estimate) =="
"$PY" benchmarks/search_step.py --device cuda --configs cifar --orders 1 --mode checkpointed \
  --batch-size 256 --repeats 3 --warmup 1 --out benchmarks/gpu_check-memory.json \
  || echo "memory check failed (exit $?)"
"$PY" benchmarks/memory.py --configs cifar --batch-sizes 256 --orders 1 --mode checkpointed \
  --out benchmarks/memory-256.json || echo "memory estimate failed (exit $?)"
