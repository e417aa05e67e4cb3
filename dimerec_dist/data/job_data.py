"""Everything a job reads from its prepared dataset, built in one place.

    data = JobData.for_training(config, manifest, ctx)     # dimerec-train
    data = JobData.for_evaluation(config, manifest)        # dimerec-eval, dimerec-export, tools

A training job gets this rank's stream and the batch recipe (batch_maker.py) on top of
what evaluation reads: the evaluation users, every item's popularity (the popularity
baseline, the negative sampler) and, on a synthetic log, every item's category.
The checks that the dataset suits the job (its split protocol, its catalog against the
model's table, held-out users where the job evaluates) run here, before anything is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from dimerec_dist.config import ConfigError, JobConfig
from dimerec_dist.data.batch_maker import BatchMaker
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import DataError, Manifest, padded_popularity, read_items, read_split
from dimerec_dist.data.stream import TrainStream
from dimerec_dist.data.synth import item_categories
from dimerec_dist.runtime.process_group import DistContext


@dataclass
class JobData:
    """The dataset as the job reads it; the evaluation users, popularity and categories are read
    on first use (an export without an index reads none of them)."""

    manifest: Manifest
    max_history: int  # the model's: evaluation users' histories are cut to it
    stream: TrainStream | None = None  # training only: this rank's samples, step by step
    batch_maker: BatchMaker | None = None  # training only: a step's Batch from the stream's output

    @functools.cached_property
    def valid(self) -> EvaluationUsers:
        return EvaluationUsers(read_split(self.manifest, "valid"), self.max_history)

    @functools.cached_property
    def test(self) -> EvaluationUsers:
        return EvaluationUsers(read_split(self.manifest, "test"), self.max_history)

    @functools.cached_property
    def popularity(self) -> np.ndarray:
        """Training count per dense item id, index 0 (padding) 0."""
        return padded_popularity(read_items(self.manifest))

    @functools.cached_property
    def categories(self) -> np.ndarray | None:
        """Category per dense item id on a synthetic log, else None."""
        return item_categories(self.manifest)

    @classmethod
    def for_evaluation(cls, config: JobConfig, manifest: Manifest) -> JobData:
        check_protocol(config, manifest)
        return cls(manifest, config.model.max_history)

    @classmethod
    def for_training(cls, config: JobConfig, manifest: Manifest, ctx: DistContext) -> JobData:
        data = cls.for_evaluation(config, manifest)  # checks the split protocol
        config.check_catalog(manifest.num_items, str(manifest.root))
        check_held_out_users(config, manifest)
        if config.train.batch_size % ctx.world_size:
            raise ConfigError(
                f"train.batch_size={config.train.batch_size} must divide evenly over {ctx.world_size} ranks"
            )
        data.stream = train_stream(config, manifest, ctx)
        data.batch_maker = BatchMaker(
            config,
            manifest.num_items,
            data.popularity,
            torch.from_numpy(data.stream.global_rows),
            pin=ctx.device.type == "cuda",
        )
        return data


def train_stream(config: JobConfig, manifest: Manifest, ctx: DistContext) -> TrainStream:
    """This rank's stream of training batches, as the job's data and model settings ask."""
    return TrainStream(
        manifest,
        max_history=config.model.max_history,
        global_batch=config.train.batch_size,
        streams=config.data.streams,
        world_size=ctx.world_size,
        rank=ctx.rank,
        seed=config.seed,
        sample_mode=config.data.sample_mode,
        backend=config.data.backend,
        window_size=config.data.window,
        mix=config.data.mix,
        chunk_targets=config.chunk_targets(),
        span_limited=config.model.gem == "sasrec",  # SASRec reads a chunk from its first item
    )


def check_protocol(config: JobConfig, manifest: Manifest) -> None:
    if manifest.protocol != config.data.split:
        raise ConfigError(
            f"{manifest.root} was prepared with the {manifest.protocol} split, the job asks for "
            f"data.split={config.data.split}; set data.split={manifest.protocol} or prepare it again"
        )


def check_held_out_users(config: JobConfig, manifest: Manifest) -> None:
    """Evaluation needs validation and test users: say so now, not after a whole epoch."""
    if not (config.train.eval_every_epochs or config.eval.at_end):
        return
    for split in ("valid", "test"):
        if manifest.data["counts"][f"{split}_users"] == 0:
            raise DataError(
                f"{manifest.root}: no {split} users (no user has enough items to hold one out), and "
                f"the job evaluates on them; use a larger data set, or train.eval_every_epochs=0 "
                f"eval.at_end=false to train without evaluating"
            )
