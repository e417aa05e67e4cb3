"""Find the job's prepared dataset, making it on first use (from raw files or synthetic logs).

Rank 0 prepares while the other ranks wait at a barrier; an existing manifest is reused,
so a re-run or a second job on the same path starts at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from dimerec_dist.config import DataConfig
from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.synth import SynthOptions, synthesize

log = logging.getLogger("dimerec.data")


def dataset_path(data: DataConfig, run_dir: Path) -> Path:
    return Path(data.path) if data.path else run_dir / "data"


def make_dataset(data: DataConfig, out: Path) -> None:
    if data.source == "synthetic":
        raw = out / "raw"
        synthesize(raw, SynthOptions(users=data.synth_users, items=data.synth_items, events=data.synth_events,
                                     seed=data.synth_seed))
        prepare(PrepareOptions(format="events", input=raw / "events", out=out, kcore=data.kcore, split=data.split))
    elif data.source == "raw":
        prepare(PrepareOptions(format=data.raw_format, input=Path(data.raw_path), out=out, kcore=data.kcore,
                               split=data.split))


def ensure_dataset(data: DataConfig, run_dir: Path, is_main: bool) -> Path:
    path = dataset_path(data, run_dir)
    if data.source != "prepared" and is_main and not (path / "manifest.json").is_file():
        log.info("preparing the %s dataset into %s", data.source, path)
        make_dataset(data, path)
    if dist.is_initialized():
        dist.barrier()
    return path
