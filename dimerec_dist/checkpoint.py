"""Saving and loading the sharded model with torch.distributed.checkpoint.

Every rank writes its own shards; nothing is gathered. A save goes to a temporary
directory that becomes the real one only after every rank has finished, so a reader
never sees half a model. Beside the shards, model.json records what the weights are
for (catalog size, model config), and a load refuses weights of another model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from dimerec_dist.config import ModelConfig

META_FILE = "model.json"


class CheckpointError(ValueError):
    pass


def save_model(model, path: Path, num_items: int, model_config: ModelConfig, extra: dict | None = None) -> None:
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    if dist.get_rank() == 0 and staging.exists():
        shutil.rmtree(staging)
    dist.barrier()
    dcp.save(model.state_dict(), checkpoint_id=str(staging))
    dist.barrier()
    if dist.get_rank() == 0:
        meta = {"num_items": num_items, "model": dataclasses.asdict(model_config), **(extra or {})}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    dist.barrier()


def check_compatible(path: Path, num_items: int, model_config: ModelConfig) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a dimerec model checkpoint (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta["num_items"] != num_items:
        raise CheckpointError(f"{path}: saved for a catalog of {meta['num_items']} items, this job has {num_items}")
    ours = dataclasses.asdict(model_config)
    shape_keys = ("embedding_dim", "max_history", "gem", "num_interests", "gem_hidden_mult", "sasrec_layers",
                  "dam_hidden", "dam_layers", "guidance_pooling", "diffusion_steps")
    differ = [f"{k} (saved {meta['model'].get(k)!r}, now {ours[k]!r})" for k in shape_keys
              if meta["model"].get(k) != ours[k]]
    if differ:
        raise CheckpointError(f"{path}: saved by a different model: {', '.join(differ)}")
    return meta


def load_model(model, path: Path, num_items: int, model_config: ModelConfig) -> dict:
    meta = check_compatible(path, num_items, model_config)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state)
    return meta
