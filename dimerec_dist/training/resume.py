"""Where a training job starts: its run directory, checked writable (on a store, this node's
working copy of it), and the checkpoint it continues from, checked against the job before the
job touches the run (its settings, data plan, table optimizer layout and dataset), so a
refused resume leaves the run directory as it was.
"""

from __future__ import annotations

from pathlib import Path

from dimerec_dist.config import ConfigError, JobConfig
from dimerec_dist.data.schema import Manifest
from dimerec_dist.data.source import cached_dataset, dataset_path
from dimerec_dist.distributed.sharding import resolved_column_block
from dimerec_dist.runtime import storage
from dimerec_dist.runtime.output_dir import writable_dir
from dimerec_dist.runtime.process_group import DistContext
from dimerec_dist.runtime.run_dir import RunDir
from dimerec_dist.runtime.storage import Location, is_remote, location
from dimerec_dist.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_data_plan,
    check_optimizer_layout,
    check_resumable,
    check_same_dataset,
    check_same_settings,
    verified,
)


def open_run_directory(where: str | Path, config: JobConfig, ctx: DistContext) -> RunDir:
    """The run directory, checked writable and held by this job; on a store, this node's working copy."""
    if is_remote(where) and not config.data.path:
        raise ConfigError(
            f"--run-dir {location(where)} is on an object store: name the data the job reads in data.path "
            f"(a prepared dataset, e.g. on the same store) rather than making it inside the run directory"
        )
    run = RunDir.open(where, ctx.local_rank, ctx.rank)
    if not run.remote:
        writable_dir(run.local / "checkpoints", "the checkpoint directory")
    return run


def checked_resume(
    config: JobConfig, ctx: DistContext, checkpoints: CheckpointManager, run_dir: Path
) -> Location | None:
    """The checkpoint train.resume names (auto: the newest that verifies), checked against this job."""
    resume_from = resume_path(config.train.resume, checkpoints)
    if resume_from is not None:
        check_resumable(resume_from)
        if config.train.resume == "auto":  # a named checkpoint may change the plan on purpose (logged at load)
            check_data_plan(resume_from, config, ctx.world_size)
        check_same_settings(resume_from, config, named=config.train.resume != "auto", world_size=ctx.world_size)
        check_optimizer_layout(
            resume_from,
            config.sharding.type,
            resolved_column_block(config.sharding.column_block, config.model.embedding_dim, ctx.world_size),
        )
        dataset = existing_dataset(config, run_dir)
        if dataset is not None:
            check_same_dataset(resume_from, dataset.root, dataset.identity, config.train.resume_other_data)
    return resume_from


def existing_dataset(config: JobConfig, run_dir: Path) -> Manifest | None:
    """The dataset the job will read, if it is there already (a resume's data always is)."""
    data = config.data
    root = cached_dataset(data) if is_remote(data.path) else dataset_path(data, run_dir)
    return Manifest.load(root, verify_checksums=False) if (root / "manifest.json").is_file() else None


def resume_path(resume: str, checkpoints: CheckpointManager) -> Location | None:
    if resume == "none":
        return None
    if resume == "auto":
        return checkpoints.latest_verified()
    path = location(resume)
    if not storage.is_dir(path):
        raise CheckpointError(f"train.resume={resume}: no such checkpoint directory")
    return verified(path)
