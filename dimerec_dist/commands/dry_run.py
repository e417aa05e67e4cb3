"""dimerec-train --dry-run: build the job, plan the item table over the ranks and show the plan
and the memory each rank holds, then exit without data loading or training. On a cluster it
answers "does this job fit, and how is the table laid out?" before any data is made or read.

The catalog's size comes from the prepared dataset (data.source=prepared, or a run directory's
data already made) or, for the synthetic default, from data.synth_items (the generator's catalog;
the log may use a few less)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dimerec_dist.config import ConfigError, JobConfig, load_config
from dimerec_dist.data.schema import DataError, Manifest
from dimerec_dist.data.source import dataset_path
from dimerec_dist.runtime import storage
from dimerec_dist.runtime.process_group import init_distributed
from dimerec_dist.runtime.storage import StorageError, child, is_remote, local_path
from dimerec_dist.training.builders import build_training
from dimerec_dist.training.run_log import setup_logging

log = logging.getLogger("dimerec.dry_run")


def catalog_size(config: JobConfig, run_dir: str | Path | None) -> tuple[int, str]:
    """(items, where the number comes from)."""
    if is_remote(config.data.path):  # its manifest alone: a dry run copies no data
        manifest = child(config.data.path, "manifest.json")
        try:
            items = Manifest(config.data.path, json.loads(storage.read_bytes(manifest))).num_items
            return items, f"the prepared dataset {manifest}"
        except (FileNotFoundError, StorageError, ValueError, KeyError) as exc:
            raise DataError(f"{manifest}: cannot size the table from it ({exc!r})") from None
    run_dir = None if run_dir is None or is_remote(run_dir) else Path(run_dir)
    path = local_path(config.data.path) if config.data.path else None
    if path is None and run_dir is not None:
        path = dataset_path(config.data, run_dir)
    if path is not None and (path / "manifest.json").is_file():
        return Manifest.load(path).num_items, f"the prepared dataset {path}"
    if config.data.source == "synthetic":
        return config.data.synth_items, "data.synth_items (the synthetic log is not made in a dry run)"
    raise DataError(f"no prepared dataset at {path or 'data.path'} to size the table from: a dry run makes no data")


def dry_run(config_path: Path | None, overrides: list[str], run_dir: str | Path | None) -> dict:
    config = load_config(config_path, overrides)
    ctx = init_distributed(config.train.device)
    setup_logging(ctx)
    items, source = catalog_size(config, run_dir)
    log.info("dry run: %s items from %s, %d rank(s) on %s", f"{items:,}", source, ctx.world_size, ctx.device)
    parts = build_training(config, items, ctx, run_dir=None)  # plans, shards and logs the memory per rank
    dense = sum(p.numel() for name, p in parts.model.named_parameters() if "item_table" not in name)
    if ctx.is_main:
        print(
            f"dry run: the job fits; item table {items + 1:,} x {config.model.embedding_dim} "
            f"({config.sharding.type} over {ctx.world_size} rank(s)), {dense:,} dense parameters, "
            f"global batch {config.train.batch_size} ({config.train.batch_size // ctx.world_size} per rank); "
            "nothing was trained",
            flush=True,
        )
    return {"dry_run": True}


USER_ERRORS = (ConfigError, DataError)
