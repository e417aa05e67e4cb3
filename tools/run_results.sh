#!/usr/bin/env bash
# Trains DimeRec and GEM-only (lambda = mu = 0) on Beauty, Games and ML-100K with the
# item table sharded over 2 ranks, then writes the test table to RUNS_DIR/table.md (the table in docs/RESULTS.md).
#   tools/run_results.sh [RUNS_DIR]        (default runs/results; about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/results}
NPROC=${NPROC:-2}
mkdir -p "$RUNS"
for data in beauty games ml100k; do
  for variant in dimerec gem_only; do
    extra=()
    [[ $variant == gem_only ]] && extra=(model.recon_weight=0 model.ssm_weight=0)
    dir="$RUNS/$data-$variant"
    if [[ -f "$dir/final.json" ]]; then echo "skip $dir (done)"; continue; fi
    # Both variants of a data set share one prepared copy.
    prepared="$RUNS/$data-data"
    [[ -f "$prepared/manifest.json" ]] && extra+=(data.source=prepared "data.path=$prepared")
    .venv/bin/torchrun --standalone --nproc_per_node="$NPROC" -m dimerec_dist.train \
      --config "configs/$data.yaml" --run-dir "$dir" "${extra[@]}" 2>&1 | grep --line-buffered dimerec
    [[ -f "$prepared/manifest.json" ]] || cp -r "$dir/data" "$prepared"
  done
done
.venv/bin/python tools/results_table.py "$RUNS"/{beauty,games,ml100k}-{dimerec,gem_only} > "$RUNS/table.md"
cat "$RUNS/table.md"
