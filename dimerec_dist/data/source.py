"""Find the job's prepared dataset, making it on first use (from raw files or synthetic logs).

Rank 0 prepares while the other ranks wait at a barrier; an existing manifest is reused,
so a re-run or a second job on the same path starts at once.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch.distributed as dist

from dimerec_dist.config import DataConfig
from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import DataError
from dimerec_dist.data.synth import SynthOptions, synthesize
from dimerec_dist.runtime.storage import StorageError, cache_key, cache_root, is_remote, local_copy, local_path

log = logging.getLogger("dimerec.data")


def dataset_path(data: DataConfig, run_dir: Path) -> Path:
    return local_path(data.path) if data.path else run_dir / "data"


def make_dataset(data: DataConfig, out: Path, overwrite: bool) -> None:
    """Prepare into `out`, which holds no complete dataset (no manifest). `overwrite` replaces
    what a killed first attempt left there; it is set only for the run's own `<run_dir>/data`,
    never for a path the user named."""
    if data.source == "synthetic":
        # Generated beside `out`, then kept as out/raw (where the categories for diversity are read).
        raw = out.with_name(f".{out.name}.synth")
        shutil.rmtree(raw, ignore_errors=True)
        synthesize(
            raw,
            SynthOptions(
                users=data.synth_users, items=data.synth_items, events=data.synth_events, seed=data.synth_seed
            ),
        )
        prepare(
            PrepareOptions(
                format="events", input=raw / "events", out=out, kcore=data.kcore, split=data.split, overwrite=overwrite
            )
        )
        raw.rename(out / "raw")
    elif data.source == "raw":
        prepare(
            PrepareOptions(
                format=data.raw_format,
                input=Path(data.raw_path),
                out=out,
                kcore=data.kcore,
                split=data.split,
                overwrite=overwrite,
            )
        )


def ensure_dataset(data: DataConfig, run_dir: Path, is_main: bool) -> Path:
    if is_remote(data.path):
        return cached_dataset(data)
    path = dataset_path(data, run_dir)
    if data.source != "prepared" and is_main and not (path / "manifest.json").is_file():
        log.info("preparing the %s dataset into %s", data.source, path)
        make_dataset(data, path, overwrite=not data.path)
    if dist.is_initialized():
        dist.barrier()
    return path


def cached_dataset(data: DataConfig) -> Path:
    """A prepared dataset on an object store (data.path=s3://...), copied once per node by its
    first local rank (manifest last; an existing complete copy is reused), read from there."""
    if data.source != "prepared":
        raise DataError(f"data.path={data.path}: a remote path holds a prepared dataset (data.source=prepared)")
    path = None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            path = local_copy(data.path, cache_root(), "manifest.json")
        except StorageError as exc:
            raise DataError(str(exc)) from None
        log.info("dataset %s read from its copy in %s", data.path, path)
    if dist.is_initialized():
        dist.barrier()
    return path or cache_root() / cache_key(data.path)
