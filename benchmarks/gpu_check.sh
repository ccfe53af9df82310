#!/usr/bin/env bash
# The GPU checks that CI (CPU only) cannot do, as one short script for a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]       # about 5 minutes on an H100/H200-class GPU
#
# 1. the CUDA tests (bf16 autocast, device placement of every tensor),
# 2. real training steps on the RTX 4080 shape (--preset default): bf16 autocast + fused AdamW,
#    eager and with --compile, on the local Gutenberg mirror, printing tokens/s from the logs,
# 3. resume + generate + evaluate on the GPU run,
# 4. the model benchmark against Hugging Face GPT-2 at the default shape (bf16).
# Everything is written below OUT_DIR (default /tmp/gpu_check); nothing into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
mkdir -p "$out"
mirror="${MINI_TRANSFORMER_MIRROR:-../shared/corpus/gutenberg}"
export PYTHONUNBUFFERED=1

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PY

echo "== 1. CUDA tests"
python -m pytest -q -m gpu tests/ 2>&1 | tail -5

echo "== 2. training steps, default shape, bf16 (eager, then compiled)"
common=(--train --mirror "$mirror" --data-dir "$out/data" --max-steps 300 --eval-interval 150 --quiet)
python -m src.main "${common[@]}" --logdir "$out/runs/eager" 2>&1 | tail -4
python -m src.main "${common[@]}" --compile --logdir "$out/runs/compiled" 2>&1 | tail -4
for run in eager compiled; do
  python - "$out/runs/$run" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"tokens_per_sec"' in l]
config = json.load(open(sys.argv[1] + "/config.json"))
rates = [r["tokens_per_sec"] for r in rows[len(rows) // 3:]]  # skip warm-up / compilation
tps = statistics.median(rates)
flops = config["flops_per_token"] * tps
print(f"{sys.argv[1]}: {tps:,.0f} tokens/s, {flops / 1e12:.1f} TFLOP/s achieved, dtype {config['dtype']}")
PY
done

echo "== 3. resume, generate, evaluate on the GPU"
python -m src.main --train --resume "$out/runs/eager" --max-steps 330 --quiet 2>&1 | tail -2
python -m src.main --generate --checkpoint "$out/runs/eager" --prompt "It was" --max-new-tokens 200 --device cuda
python -m src.main --evaluate --checkpoint "$out/runs/eager" --device cuda --quiet | head -8

echo "== 4. model benchmark vs Hugging Face GPT-2 (default shape, bf16)"
python -m benchmarks.model_bench --device cuda --preset default --dtype bf16 2>&1 | tail -25
