"""Save and load time of a training checkpoint with a large item table.

    torchrun --standalone --nproc_per_node=2 tools/bench_checkpoint.py --items 10000000 --dim 64 --out runs/bench-ckpt

Builds the sharded model (no data needed), writes a full training checkpoint (table,
fused optimizer state, dense weights and optimizer) with torch.distributed.checkpoint,
loads it back, checks the table survived, and reports seconds and GB/s on rank 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from provenance import write_provenance  # tools/, beside this script

from dimerec_dist.config import config_to_dict, load_config
from dimerec_dist.runtime.process_group import init_distributed, shutdown
from dimerec_dist.training.builders import build_model, dense_optimizer
from dimerec_dist.training.checkpoint import CheckpointManager, TrainingState
from dimerec_dist.training.run_log import setup_logging


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ctx = init_distributed("cpu")
    setup_logging(ctx)
    config = load_config(None, [f"model.embedding_dim={args.dim}"])
    model, shards = build_model(config, args.items, ctx, run_dir=None)
    _, optimizer, schedule = dense_optimizer(model, config)
    manager = CheckpointManager(args.out / "checkpoints", keep=1)
    state = TrainingState(step=1)
    dense = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
    probe = shards[0].weight[:8].clone() if shards and shards[0].weight.shape[0] else None

    dist.barrier()
    started = time.time()
    path = manager.save(model, dense, state, args.items, config_to_dict(config))
    dist.barrier()
    save_seconds = time.time() - started

    for shard in shards:  # scribble over the table so the load has to restore it
        shard.weight.zero_()
    dist.barrier()
    started = time.time()
    CheckpointManager.load(path, model, args.items, config.model)
    dist.barrier()
    load_seconds = time.time() - started
    if probe is not None and not torch.equal(probe, shards[0].weight[:8]):
        raise SystemExit("the loaded table differs from the saved one")

    if ctx.is_main:
        size = directory_bytes(path)
        report = {
            "items": args.items,
            "dim": args.dim,
            "world_size": ctx.world_size,
            "checkpoint_gb": round(size / 1e9, 3),
            "save_s": round(save_seconds, 2),
            "save_gb_per_s": round(size / 1e9 / save_seconds, 2),
            "load_s": round(load_seconds, 2),
            "load_gb_per_s": round(size / 1e9 / load_seconds, 2),
        }
        print(json.dumps(report, indent=2))
        (args.out / "bench_checkpoint.json").write_text(json.dumps(report, indent=2) + "\n")
        write_provenance(args.out)
        shutil.rmtree(args.out / "checkpoints")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
