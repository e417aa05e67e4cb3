#!/usr/bin/env bash
# The CUDA path in one run, on a machine with one GPU or more (sized to fit ~8 minutes):
#   1. versions: the card, torch/CUDA, fbgemm-gpu's CUDA build, torchrec;
#   2. the main job on the GPU under torchrun (NCCL, the table sharded by TorchRec into
#      FBGEMM's CUDA kernels, torch.distributed.checkpoint from device memory), then
#      `dimerec-eval` reloading its model;
#   3. one epoch with the GPU-only fused Adam on the table;
#   4. tools/bench_train.py: GPU beside CPU on the same batches (rates and per-step losses),
#      then the GPU alone up to 50M items at a GPU-sized batch.
# Each step has its own time limit, cut to what is left of DEADLINE (seconds, default 520) for the
# whole check, and a failure does not stop the next; the logs and results land in OUT (the model
# checkpoints are left out of it).
#   tools/gpu_check.sh runs/gpu_check            # PYTHON=python3 by default
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
started=$SECONDS

deadline=${DEADLINE:-520}

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it, log to OUT/NAME.log, show its tail
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  local left=$((deadline - (SECONDS - started)))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, ${left}s left of the check's ${deadline}s"
    return
  fi
  echo "== $name (limit ${limit}s, $((SECONDS - started))s into the check)"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "   exit $rc after $((SECONDS - t0))s"
  tail -n "${TAIL:-12}" "$out/$name.log" | cut -c1-300
}

step versions 120 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; \
  $py -c 'import torch, fbgemm_gpu, torchrec
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"nccl\", torch.cuda.nccl.version(),
      torch.cuda.get_device_name(0))
print(\"fbgemm_gpu\", fbgemm_gpu.__version__, fbgemm_gpu.__variant__, \"torchrec\", torchrec.__version__)'"

torchrun=("$py" -m torch.distributed.run --standalone --nproc_per_node=1)
TAIL=20 step quickstart 200 "${torchrun[@]}" -m dimerec_dist.train --config configs/quickstart.yaml \
  --run-dir "$out/quickstart" train.device=cuda
step quickstart_eval 90 "${torchrun[@]}" -m dimerec_dist.eval_cli --run-dir "$out/quickstart"  # device: the run's
step fused_adam 120 "${torchrun[@]}" -m dimerec_dist.train --config configs/quickstart.yaml \
  --run-dir "$out/fused_adam" train.device=cuda train.sparse_optimizer=adam train.sparse_lr=0.001 train.epochs=1
TAIL=16 step bench_gpu_vs_cpu 150 "$py" tools/bench_train.py --out "$out/bench_gpu_vs_cpu" --devices cpu cuda \
  --worlds 1 --catalogs 1000000 --layouts row_wise replicated --batch 256 --steps 40 --repeats 1
TAIL=20 step bench_gpu_scale 200 "$py" tools/bench_train.py --out "$out/bench_gpu_scale" --devices cuda \
  --worlds 1 --catalogs 1000000 10000000 50000000 --layouts row_wise --batch 4096 --steps 40 --repeats 1

echo "== test metrics (the CPU's quickstart: HR@10 0.1598, NDCG@10 0.0988, HR@50 0.2816; docs/RESULTS.md)"
for f in quickstart/final.json quickstart/eval.json fused_adam/final.json; do
  [[ -f "$out/$f" ]] && "$py" -c 'import json, sys; t = json.load(open(sys.argv[1]))["test"]
print(sys.argv[2], " ".join(f"{k}={t[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50")))' "$out/$f" "$f"
done
rm -rf "$out"/*/model "$out"/*/checkpoints "$out"/*/data
echo "== done in $((SECONDS - started))s"
