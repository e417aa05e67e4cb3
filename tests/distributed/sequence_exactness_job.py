"""A torchrun job for test_sequence_exactness.py: the trainer's sharded model, fed the first
global batch of a prepared data set in sequence mode and the same targets as per-prefix
histories, returns per-target losses in both modes, for each GEM variant.

    python -m torch.distributed.run --nproc_per_node=N -m tests.distributed.sequence_exactness_job \
        DATASET OUT.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dimerec_dist.config import load_config
from dimerec_dist.data.job_data import JobData
from dimerec_dist.data.schema import Manifest
from dimerec_dist.model import DimeRecLosses
from dimerec_dist.runtime.process_group import init_distributed, shutdown
from dimerec_dist.training.builders import build_training
from tests.distributed.conftest import TINY_JOB
from tests.distributed.sequence_variants import VARIANTS

LOSSES = DimeRecLosses.names()


def per_target_losses(model, batch) -> np.ndarray:
    with torch.no_grad():
        losses = model(batch, batch.draw, reduction="none")
    return torch.stack([getattr(losses, name) for name in LOSSES], dim=1).numpy()


def main(dataset: Path, out: Path) -> None:
    ctx = init_distributed("cpu")
    manifest = Manifest.load(dataset)
    results = {}
    for variant, overrides in VARIANTS.items():
        config = load_config(None, [*TINY_JOB, "data.sample_mode=sequence", "data.chunk_targets=8", *overrides])
        parts = build_training(config, manifest.num_items, ctx, run_dir=None)
        parts.model.eval()
        data = JobData.for_training(config, manifest, ctx)  # the trainer's stream and batch recipe
        _, chunks, targets = next(data.stream.batches(0))
        sequence = per_target_losses(parts.model, data.batch_maker(0, 0, chunks, targets))
        windows = per_target_losses(
            parts.model, data.batch_maker(0, 0, chunks.histories(config.model.max_history), targets)
        )
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, (sequence.tolist(), windows.tolist(), int(chunks.lengths.sum())))
        results[variant] = {
            "sequence": [row for rank in gathered for row in rank[0]],  # global batch order
            "per_prefix": [row for rank in gathered for row in rank[1]],
            "chunk_ids": sum(rank[2] for rank in gathered),
        }
    if ctx.is_main:
        out.write_text(json.dumps(results))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
