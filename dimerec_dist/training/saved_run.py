"""A finished run's model, loaded for evaluation or export, with the data it is judged on.

    run = load_saved_run("runs/quick", overrides=[])   # any world size: the table is resharded
    run.model, run.shards, run.data.test, run.data.popularity, ...

The model is rebuilt from the run's config.yaml (overrides applied) exactly as training
built it (training/builders.py), and its saved weights (run_dir/model) are loaded with the table
sharded over this job's ranks; the data comes from data/job_data.py, as training's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dimerec_dist.config import ConfigError, JobConfig, load_config
from dimerec_dist.data.job_data import JobData
from dimerec_dist.data.schema import Manifest
from dimerec_dist.data.source import cached_dataset, dataset_path
from dimerec_dist.runtime.process_group import DistContext, init_distributed
from dimerec_dist.runtime.run_dir import RunDir
from dimerec_dist.runtime.storage import is_remote
from dimerec_dist.training.builders import build_model
from dimerec_dist.training.checkpoint import check_compatible, load_model
from dimerec_dist.training.run_log import setup_logging


@dataclass
class SavedRun:
    config: JobConfig
    data: JobData
    ctx: DistContext
    model: object  # TorchRec's DistributedModelParallel, in eval mode
    shards: list  # this rank's pieces of the item table

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest


def load_saved_run(run_dir: str | Path | RunDir, overrides: list[str]) -> SavedRun:
    """The run (a directory or a store URI: its config.yaml is fetched, its model read from there),
    checked against its dataset before any process group or model is made."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    config_file = run.fetch("config.yaml")
    if not config_file.is_file():
        raise ConfigError(f"{run} is not a dimerec-train run directory (no config.yaml)")
    config = load_config(config_file, overrides)
    remote = is_remote(config.data.path)
    manifest = Manifest.load(cached_dataset(config.data) if remote else dataset_path(config.data, run.local))
    data = JobData.for_evaluation(config, manifest)
    check_compatible(run.place("model"), manifest.num_items, config.model)
    ctx = init_distributed(config.train.device)
    setup_logging(ctx)
    model, shards = build_model(config, manifest.num_items, ctx, run_dir=None)
    load_model(model, run.place("model"), manifest.num_items, config.model)
    model.eval()
    return SavedRun(config, data, ctx, model, shards)
