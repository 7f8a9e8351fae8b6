#!/usr/bin/env bash
# Issue 6 on one lent GPU, in one call: the PyTorch peer, kdjax's KD-step benchmark and the
# K-students (vmap) figure, all on the same GPU in the same run (a ratio measured in one run is
# what counts, see ../shared/PERFORMANCE.md). About 10 minutes at most on an H100 (the LM part, LM_S, 2 at most).
#
#   bash benchmarks/gpu_issue6.sh [PEER_SCRIPT]    # run from the repository root
#
# PEER_SCRIPT defaults to benchmarks/peer_torch_kd.py (a copy of ../shared/peer/peer_torch_kd.py,
# since the repository's parent folder is not on the device machine). Writes under $OUT (default
# /tmp/issue6):
#   env.txt            the GPU, its driver and the Python packages' versions
#   peer_torch.jsonl   one JSON line per (variant, batch) of the PyTorch peer
#   kdjax_bench.jsonl  one JSON line per row of benchmarks/kd_step.py; kdjax_bench.txt its log and table
#   sweep.jsonl        one JSON line per K of benchmarks/sweep_throughput.py; sweep.txt its table
#   lm_step.jsonl      one JSON line per row of benchmarks/lm_step.py (the language-model step, tokens/s)
# Each part runs under a time limit (seconds: PEER_S, KDJAX_S, SWEEP_S; kd_step.py starts no row
# after KDJAX_BUDGET_S); a part cut short keeps the lines it wrote. The exit status is 1 if any
# part failed or ran out of time.
set -uo pipefail
OUT=${OUT:-/tmp/issue6}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PEER=${1:-benchmarks/peer_torch_kd.py}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
t0=$SECONDS

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import sys, jax, flax, optax, torch; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

echo "== PyTorch peer: $PEER ($((SECONDS - t0)) s)"
timeout "${PEER_S:-180}" $PY "$PEER" | tee "$OUT/peer_torch.jsonl" || status=1

echo "== kdjax: benchmarks/kd_step.py ($((SECONDS - t0)) s)"
timeout "${KDJAX_S:-230}" $PY benchmarks/kd_step.py --json "$OUT/kdjax_bench.jsonl" \
  --time-budget "${KDJAX_BUDGET_S:-180}" 2>&1 | tee "$OUT/kdjax_bench.txt" || status=1

echo "== kdjax: K students at once, benchmarks/sweep_throughput.py ($((SECONDS - t0)) s)"
timeout "${SWEEP_S:-90}" $PY benchmarks/sweep_throughput.py --preset cifar100_resnet32x4_resnet8x4 --ks 1,4,8,16 \
  2>&1 | tee "$OUT/sweep.txt" || status=1
grep '^{' "$OUT/sweep.txt" > "$OUT/sweep.jsonl" || true

echo "== kdjax: the language-model step, benchmarks/lm_step.py ($((SECONDS - t0)) s)"
timeout "${LM_S:-120}" $PY benchmarks/lm_step.py --seq-len 256 --batch 64 --precision bf16 --large \
  --json "$OUT/lm_step.jsonl" 2>&1 | tee "$OUT/lm_step.txt" || status=1

echo "== done in $((SECONDS - t0)) s, status $status"
exit $status
