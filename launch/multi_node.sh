#!/usr/bin/env bash
# Several machines: run this on every node with the same MASTER_ADDR and its own NODE_RANK.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NPROC_PER_NODE=8 launch/multi_node.sh --config configs/beauty.yaml --run-dir /shared/runs/beauty
# c10d rendezvous on MASTER_ADDR:MASTER_PORT; the run dir must be on storage every node sees
# (checkpoints are written by all ranks). The Python environment is the caller's: dimerec-torchrun
# from PATH, or TORCHRUN=/path/to/it. On SLURM, launch/slurm.sbatch does this for every node.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29400}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
RDZV_ID=${RDZV_ID:-dimerec}
TORCHRUN=${TORCHRUN:-dimerec-torchrun}
command -v "$TORCHRUN" >/dev/null || { echo "multi_node.sh: $TORCHRUN is not on PATH: activate the environment dimerec-dist is installed in, or set TORCHRUN" >&2; exit 2; }
exec "$TORCHRUN" --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$RDZV_ID" \
  -m dimerec_dist.commands.train "$@"
