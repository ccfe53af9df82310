#!/usr/bin/env bash
# The GPU checks that CI (CPU only) cannot do, as one short script for a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]                 # a few minutes on an H100/H200-class GPU
#   bash benchmarks/gpu_check.sh --device cpu [OUT_DIR]    # dry run: every Python part, tiny, on the CPU
#
# 1. the CUDA tests (bf16 autocast, device placement of every tensor),
# 2. "will it fit?": --find-batch-size at the RTX 4080 shape (--preset default, bf16),
# 3. real training steps at that shape: bf16 autocast + fused AdamW, eager and with --compile, on the
#    local Gutenberg mirror: tokens/s and MFU from the logs, and each run's time split,
# 4. resume + generate + evaluate on the GPU run,
# 5. the model benchmark against Hugging Face GPT-2, side by side (A B A B, medians): our training loop
#    in fp32/bf16/bf16 + torch.compile vs HF eager, with MFU against the card's bf16 peak, at the
#    default shape and at the GPT-2 small shape (12 layers, 12 heads, C = 768, T = 1024, V = 50,257;
#    target: MFU >= 45 % with bf16 + compile), plus the LM head with V padded to a multiple of 64.
# Everything is written below OUT_DIR (default /tmp/gpu_check); nothing into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
if [[ "${1:-}" == "--device" ]]; then
  device="${2:?--device needs a value: cuda or cpu}"
  shift 2
fi
[[ "$device" == cuda || "$device" == cpu ]] || { echo "error: --device must be cuda or cpu" >&2; exit 2; }
out="${1:-/tmp/gpu_check}"
mkdir -p "$out"
mirror="${MINI_TRANSFORMER_MIRROR:-../shared/corpus/gutenberg}"
export PYTHONUNBUFFERED=1

if [[ "$device" == cuda ]]; then
  # The real check: the shapes of the issue, enough steps for steady numbers.
  shape=(--preset default)
  steps=300; eval_interval=150; resume_to=330
  bench_default=(--preset default --batch-size 32)
  bench_gpt2=(--n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 --vocab-size 50257 --batch-size 8)
  bench_common=(--device cuda --repeats 7 --steps 5)
  compile_flag=(--compile)
else
  # Dry run: the same commands on tiny shapes, so that every Python part is exercised in a minute.
  shape=(--preset tiny --n-layer 1 --n-embd 32 --n-head 2 --block-size 32)
  steps=20; eval_interval=10; resume_to=24
  bench_default=(--preset tiny --batch-size 4)
  bench_gpt2=(--preset tiny --n-layer 2 --n-head 2 --n-embd 64 --block-size 64 --vocab-size 50257 --batch-size 2)
  bench_common=(--device cpu --repeats 2 --steps 1 --compile no)
  compile_flag=()  # torch.compile on a CPU takes minutes (and ran eagerly anyway: --compile is CUDA only)
fi

python - "$device" <<'PY'
import sys, torch
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible (use --device cpu for a dry run)"
    print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
else:
    print("dry run on the CPU | torch", torch.__version__)
PY

echo "== 1. CUDA tests"
if [[ "$device" == cuda ]]; then
  # --continue-on-collection-errors: a GPU box without the playground's or notebooks' packages still runs the CUDA tests
  python -m pytest -q -m gpu --continue-on-collection-errors tests/ 2>&1 | tail -15 \
    || echo "(CUDA tests: failures or modules not collected, see above; the checks below still run)"
else
  echo "(skipped in the dry run)"
fi

echo "== 2. will it fit? (--find-batch-size)"
python -m src.main --train "${shape[@]}" --mirror "$mirror" --data-dir "$out/data" --device "$device" \
  --find-batch-size --quiet

echo "== 3. training steps (eager, then compiled), tokens/s and MFU from the logs"
common=(--train "${shape[@]}" --mirror "$mirror" --data-dir "$out/data" --device "$device"
        --max-steps "$steps" --eval-interval "$eval_interval" --quiet)
python -m src.main "${common[@]}" --logdir "$out/runs/eager" 2>&1 | grep -E "^(Time|Stopped|Best)"
python -m src.main "${common[@]}" "${compile_flag[@]}" --logdir "$out/runs/compiled" 2>&1 \
  | grep -E "^(Time|Stopped|Best|warning)"
for run in eager compiled; do
  python - "$out/runs/$run" <<'PY'
import json, statistics, sys
import torch
from benchmarks.model_bench import peak_tflops
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"tokens_per_sec"' in l]
config = json.load(open(sys.argv[1] + "/config.json"))
rates = [r["tokens_per_sec"] for r in rows[len(rows) // 3:]]  # skip warm-up / compilation
tps = statistics.median(rates)
flops = config["flops_per_token"] * tps
device = torch.device(config["device"])
peak = peak_tflops(device, None)
mfu = f", MFU {100 * flops / (peak * 1e12):.1f} % of {peak:g} TFLOP/s bf16" if peak and config["dtype"] == "bf16" else ""
print(f"{sys.argv[1]}: {tps:,.0f} tokens/s, {flops / 1e12:.3f} TFLOP/s achieved{mfu}, dtype {config['dtype']}")
PY
done

echo "== 4. resume, generate, evaluate"
python -m src.main --train --resume "$out/runs/eager" --mirror "$mirror" --data-dir "$out/data" --max-steps "$resume_to" \
  --quiet   2>&1 | grep -E "^(Time|Stopped)"
python -m src.main --generate --checkpoint "$out/runs/eager" --prompt "It was" --max-new-tokens 100 \
  --device "$device"
echo
python -m src.main --evaluate --checkpoint "$out/runs/eager" --mirror "$mirror" --data-dir "$out/data" \
  --device "$device" --quiet | head -8

echo "== 5a. model benchmark vs Hugging Face GPT-2, default shape"
python -m benchmarks.model_bench "${bench_common[@]}" "${bench_default[@]}" 2>&1
echo "== 5b. model benchmark vs Hugging Face GPT-2, GPT-2 small shape (target: MFU >= 45 % with bf16 + compile)"
python -m benchmarks.model_bench "${bench_common[@]}" "${bench_gpt2[@]}" --skip-generation --lm-head-padding 2>&1
