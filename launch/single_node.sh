#!/usr/bin/env bash
# One machine, N ranks (one per GPU, or CPU processes with gloo).
#   NPROC_PER_NODE=2 launch/single_node.sh --config configs/beauty.yaml --run-dir runs/beauty [key=value ...]
# The Python environment is the caller's: dimerec-torchrun from PATH, or TORCHRUN=/path/to/it.
set -euo pipefail
TORCHRUN=${TORCHRUN:-dimerec-torchrun}
command -v "$TORCHRUN" >/dev/null || { echo "single_node.sh: $TORCHRUN is not on PATH: activate the environment dimerec-dist is installed in, or set TORCHRUN" >&2; exit 2; }
NPROC_PER_NODE=${NPROC_PER_NODE:-$(python3 -c 'import shutil,subprocess; print(len(subprocess.run(["nvidia-smi","-L"],capture_output=True,text=True).stdout.splitlines()) if shutil.which("nvidia-smi") else 2)')}
exec "$TORCHRUN" --standalone --nproc_per_node="$NPROC_PER_NODE" -m dimerec_dist.commands.train "$@"
