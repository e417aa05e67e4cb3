#!/usr/bin/env bash
# One machine, N ranks (one per GPU, or CPU processes with gloo).
#   NPROC=2 launch/single_node.sh --config configs/beauty.yaml --run-dir runs/beauty [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(python3 -c 'import shutil,subprocess; print(len(subprocess.run(["nvidia-smi","-L"],capture_output=True,text=True).stdout.splitlines()) if shutil.which("nvidia-smi") else 2)')}
exec .venv/bin/dimerec-torchrun --standalone --nproc_per_node="$NPROC" -m dimerec_dist.train "$@"
