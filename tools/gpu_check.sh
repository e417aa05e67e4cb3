#!/usr/bin/env bash
# The CUDA path in one run, on a machine with one GPU (sized to finish inside 8 minutes), most
# important first, so a short lease still gets the headline figures:
#   1. versions: the card, torch/CUDA/NCCL, fbgemm-gpu's build, torchrec;
#   2. the step at 1M items, d 64, 1,024 shared negatives: batches 256, 4,096 and 16,384, fp32
#      against bf16, the plain step against the pipelined one (tools/bench_train.py --compare-steps);
#   3. a torch.profiler summary of steady-state steps, plain and pipelined, at batch 4,096 in bf16:
#      top operators by device time, host time against device time, the device's idle share;
#   4. the main job on the GPU under torchrun (NCCL, TorchRec's sharded table in FBGEMM's CUDA
#      kernels, the pipelined step, DCP checkpoints from device memory), `dimerec-eval` reloading it;
#   5. the step at 10M and 50M items, batch 16,384, bf16, plain against pipelined;
#   6. the main job in bf16.
# Each step has its own time limit, cut to what is left of DEADLINE (seconds, default 460) for the
# whole check; the logs and results land in OUT (model checkpoints left out). Any failed step
# fails the script (exit 1), after the rest have run.
# The machine's own CUDA torch is used (PYTHON, default python3); fbgemm-gpu and torchrec matching
# it can be carried in as wheels and installed first (WHEELS=dir: pip install --no-deps dir/*.whl).
#   tools/gpu_check.sh runs/gpu_check
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu_check.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
started=$SECONDS

deadline=${DEADLINE:-460}
failed=()

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
  ((rc != 0)) && failed+=("$name (exit $rc)")
  tail -n "${TAIL:-12}" "$out/$name.log" | cut -c1-300
}

if [[ -n "${WHEELS:-}" ]]; then
  step wheels 90 "$py" -m pip install --no-deps --no-index "$WHEELS"/*.whl
fi
step versions 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; \
  $py -c 'import torch, fbgemm_gpu, torchrec
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"nccl\", torch.cuda.nccl.version(),
      torch.cuda.get_device_name(0))
print(\"fbgemm_gpu\", fbgemm_gpu.__version__, fbgemm_gpu.__variant__, \"torchrec\", torchrec.__version__)'"

bench=("$py" tools/bench_train.py --devices cuda --worlds 1 --compare-steps --repeats 1 --warmup 5)
TAIL=20 step steps_1m 200 "${bench[@]}" --out "$out/steps_1m" --catalogs 1000000 --batches 256 4096 16384 \
  --precisions fp32 bf16 --steps 30
TAIL=4 step profile_1m 70 "${bench[@]}" --out "$out/profile_1m" --catalogs 1000000 --batches 4096 \
  --precisions bf16 --steps 20 --profile
for f in "$out"/profile_1m/*.profile.txt; do [[ -f "$f" ]] && { echo "-- $f"; head -n 30 "$f" | cut -c1-200; }; done

torchrun=("$py" -m torch.distributed.run --standalone --nproc_per_node=1)
TAIL=6 step quickstart 120 "${torchrun[@]}" -m dimerec_dist.commands.train --config configs/quickstart.yaml \
  --run-dir "$out/quickstart" train.device=cuda
TAIL=4 step quickstart_eval 60 "${torchrun[@]}" -m dimerec_dist.commands.evaluate --run-dir "$out/quickstart"
TAIL=12 step steps_scale 150 "${bench[@]}" --out "$out/steps_scale" --catalogs 10000000 50000000 --batches 16384 \
  --precisions bf16 --steps 20
TAIL=6 step quickstart_bf16 120 "${torchrun[@]}" -m dimerec_dist.commands.train --config configs/quickstart.yaml \
  --run-dir "$out/quickstart_bf16" train.device=cuda train.precision=bf16

# The CPU's figures for the same code and configs (2-core CPU machine, docs/BENCHMARKS.md, "The step").
echo "== test metrics (CPU, this code: fp32 HR@10 0.1644 NDCG@10 0.1036 HR@50 0.2876; bf16 HR@10 0.1628 NDCG@10 0.1027 HR@50 0.2900)"
for f in quickstart/final.json quickstart/eval.json quickstart_bf16/final.json; do
  [[ -f "$out/$f" ]] && "$py" -c 'import json, sys; t = json.load(open(sys.argv[1]))["test"]
print(sys.argv[2], " ".join(f"{k}={t[k]:.4f}" for k in ("hr@10", "ndcg@10", "hr@50")))' "$out/$f" "$f"
done
rm -rf "$out"/*/model "$out"/*/checkpoints "$out"/*/data
echo "== done in $((SECONDS - started))s"
if ((${#failed[@]})); then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
