#!/usr/bin/env bash
# The bundles behind docs/SERVING.md's figures at catalog scale, built from synthetic logs:
#
#   tools/serving_bundles.sh            # 1M items (reuses runs/scale, docs/BENCHMARKS.md's 100M-event log)
#   TEN_M=1 tools/serving_bundles.sh    # and 10M items (a 40M-event log of 10.3M items, uniform popularity)
#
# Each catalog: a model trained a few hundred steps on 2 CPU ranks (the figures are about search, not
# quality), exported from 2 ranks as float32 for exact search; at 1M items also with an HNSW index
# whose efSearch export picks to reach recall@50 >= 0.95 on validation users (at 10M items building
# it takes most of an hour on 2 cores). Bundles go to $OUT (runs/serving).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/serving}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

catalog() {  # NAME RAW_DIR PREPARED_DIR STEPS HNSW(0/1) SYNTH_ARGS...
  local name=$1 raw=$2 prepared=$3 steps=$4 hnsw=$5; shift 5
  if [ ! -f "$raw/synth.json" ]; then
    stamp "$name: synthesising the log into $raw"
    "$BIN/dimerec-synth" --out "$raw" --workers 2 "$@"
  fi
  if [ ! -f "$prepared/manifest.json" ]; then
    stamp "$name: preparing $prepared"
    "$BIN/dimerec-prepare" --format events --input "$raw/events" --out "$prepared"
  fi
  local run="$OUT/$name-run"
  if ! ls -d "$run"/checkpoints/step-* >/dev/null 2>&1; then
    stamp "$name: training $steps steps on 2 ranks"
    OMP_NUM_THREADS=1 "$BIN/torchrun" --standalone --nproc_per_node=2 -m dimerec_dist.commands.train --run-dir "$run" \
      data.source=prepared "data.path=$prepared" "train.max_steps=$steps" train.batch_size=1024 \
      train.eval_every_epochs=0 eval.at_end=false train.log_every=50
  fi
  [ -d "$OUT/$name-f32" ] || { stamp "$name: exporting float32"; \
    OMP_NUM_THREADS=1 "$BIN/torchrun" --standalone --nproc_per_node=2 -m dimerec_dist.serving.export --run-dir "$run" --out "$OUT/$name-f32"; }
  [ "$hnsw" = 0 ] || [ -d "$OUT/$name-f32-hnsw" ] || { stamp "$name: exporting float32 + HNSW at recall@50 0.95"; \
    "$BIN/dimerec-export" --run-dir "$run" --out "$OUT/$name-f32-hnsw" --index hnsw --recall 0.95; }
  stamp "$name: done"
}

catalog m1 runs/scale/raw runs/scale/prepared 400 1 --users 1000000 --items 1000000 --events 100000000
if [ "${TEN_M:-0}" = 1 ]; then
  catalog m10 runs/scale10m/raw runs/scale10m/prepared 50 0 \
    --users 1000000 --items 10300000 --events 40000000 --zipf-exponent 0
fi
