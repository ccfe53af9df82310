#!/usr/bin/env bash
# The multi-GPU checks that CI (CPU, gloo) cannot do: DDP with NCCL on a machine with 2 or more CUDA GPUs.
#
#   bash benchmarks/ddp_gpu_check.sh [OUT_DIR]       # about 5 minutes on two H100/H200-class GPUs
#
# 1. the CPU/gloo DDP tests (tests/test_distributed.py), as a baseline,
# 2. NCCL: 2 GPUs x --batch-size 8 against 1 GPU x 16, same seed, fp32, --grad-accum 2: the weights
#    must agree to about 1e-3 (TF32 matmuls and NCCL's summation order make them differ more than the
#    1e-5 of the CPU test),
# 3. Ctrl-C (SIGINT to torchrun): both processes stop after the same step, rank 0 writes one last.pt,
#    then --resume under torchrun finishes the run, and a plain one-GPU --generate loads the checkpoint,
# 4. speed: the default shape in bf16 on 1 GPU and on 2 (eager, then --compile): tokens/s of all
#    processes together, from metrics.jsonl.
# Everything is written below OUT_DIR (default /tmp/ddp_gpu_check); nothing into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/ddp_gpu_check}"
mkdir -p "$out"
mirror="${MINI_TRANSFORMER_MIRROR:-../shared/corpus/gutenberg}"
export PYTHONUNBUFFERED=1
torchrun=(python -m torch.distributed.run --standalone --nproc_per_node=2)

python - <<'PY'
import torch
assert torch.cuda.device_count() >= 2, f"needs 2 CUDA GPUs, found {torch.cuda.device_count()}"
import torch.distributed as dist
print("GPUs:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
      "| torch", torch.__version__, "| NCCL:", dist.is_nccl_available() and torch.cuda.nccl.version())
PY

echo "== 1. DDP tests on the CPU (gloo)"
python -m pytest -q tests/test_distributed.py 2>&1 | tail -3

echo "== 2. NCCL: 2 GPUs x 8 against 1 GPU x 16"
small=(--train --mirror "$mirror" --data-dir "$out/data" --preset tiny --device cuda --dtype fp32 --dropout 0
       --grad-accum 2 --max-steps 60 --eval-interval 30 --seed 7 --quiet)
"${torchrun[@]}" -m src.main "${small[@]}" --batch-size 8 --logdir "$out/runs/two"
python -m src.main "${small[@]}" --batch-size 16 --logdir "$out/runs/one" 2>&1 | tail -1
python - "$out/runs" <<'PY'
import json, sys, torch
runs = sys.argv[1]
two = torch.load(f"{runs}/two/checkpoints/last.pt", weights_only=True)
one = torch.load(f"{runs}/one/checkpoints/last.pt", weights_only=True)
diff = max((two["model"][k].float() - one["model"][k].float()).abs().max().item() for k in one["model"])
config = json.load(open(f"{runs}/two/config.json"))
print(f"world_size {config['world_size']}, effective batch {config['effective_batch']['sequences']}, "
      f"largest weight difference 2 GPUs vs 1 GPU: {diff:.2e}")
assert config["world_size"] == 2 and diff < 1e-3, "DDP on NCCL does not match one GPU"
PY

echo "== 3. Ctrl-C under torchrun, resume, generate on one GPU"
"${torchrun[@]}" -m src.main "${small[@]}" --batch-size 8 --max-steps 100000 --logdir "$out/runs/stop" \
  > "$out/stop.log" 2>&1 &
launcher=$!
until grep -q '"train/loss":' "$out/runs/stop/metrics.jsonl" 2>/dev/null; do
  kill -0 "$launcher" 2>/dev/null || { tail -20 "$out/stop.log"; exit 1; }  # it ended before training
  sleep 0.2
done
kill -INT "$launcher"  # what Ctrl-C does: torchrun passes SIGINT on to every process
wait "$launcher" || true  # torchrun itself ends with a SignalException traceback: expected
grep -E "SIGINT received|Stopped|Resume with" "$out/stop.log"
step=$(python -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['state']['step'])" \
  "$out/runs/stop/checkpoints/last.pt")
"${torchrun[@]}" -m src.main --train --resume "$out/runs/stop" --mirror "$mirror" --data-dir "$out/data" --max-steps $((step + 50)) \
  --quiet 2>&1 | grep -E "Stopped|Resuming"
python -m src.main --generate --checkpoint "$out/runs/stop" --prompt "It was" --max-new-tokens 80 --device cuda

echo "== 4. speed: default shape, bf16, 1 GPU vs 2 GPUs (eager, then --compile)"
big=(--train --mirror "$mirror" --data-dir "$out/data" --max-steps 200 --eval-interval 100 --quiet)
python -m src.main "${big[@]}" --logdir "$out/runs/speed1" 2>&1 | tail -1
"${torchrun[@]}" -m src.main "${big[@]}" --logdir "$out/runs/speed2" 2>&1 | tail -1
"${torchrun[@]}" -m src.main "${big[@]}" --compile --logdir "$out/runs/speed2c" 2>&1 | tail -1
for run in speed1 speed2 speed2c; do
  python - "$out/runs/$run" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"tokens_per_sec"' in l]
config = json.load(open(sys.argv[1] + "/config.json"))
tps = statistics.median(r["tokens_per_sec"] for r in rows[len(rows) // 3:])  # skip warm-up / compilation
print(f"{sys.argv[1]}: {config['world_size']} GPU(s), effective batch {config['effective_batch']['sequences']}, "
      f"{tps:,.0f} tokens/s")
PY
done
