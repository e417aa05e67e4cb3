"""The batch recipe: what turns the stream's histories and targets into a step's Batch.

A step's batch is this rank's samples (the stream), the step's shared negatives (drawn
alike on every rank from (seed, epoch, step)), the logQ corrections of sampled softmax,
and the step's diffusion noise for this rank's rows of the global batch. The trainer,
the training benchmark and the tests all make their batches here, so a change to the
recipe changes every one of them.
"""

from __future__ import annotations

import numpy as np
import torch

from dimerec_dist.config import JobConfig
from dimerec_dist.data.batch import Batch, NegativeSampler, make_batch
from dimerec_dist.data.samples import HistoryBatch, SequenceChunks
from dimerec_dist.model import NoiseDraw
from dimerec_dist.runtime.random_streams import generator


class BatchMaker:
    """`maker(epoch, step, history, targets)`: the step's Batch for this rank's samples.

    `popularity`: training count per item id (index 0 padding), needed by the popularity
    sampler and by in-batch negatives' logQ correction; `rank_rows`: this rank's rows of the
    global batch (the noise is drawn for the global batch, so a sample's noise is the same
    at any world size); `pin`: page-locked batches, for an asynchronous copy to a GPU.
    """

    def __init__(
        self,
        config: JobConfig,
        num_items: int,
        popularity: np.ndarray | None,
        rank_rows: torch.Tensor,
        pin: bool = False,
    ):
        train = config.train
        if popularity is None and (train.negative_sampler == "popularity" or train.in_batch_negatives):
            raise ValueError("the popularity sampler and in-batch negatives need the items' popularity")
        self.config, self.rank_rows, self.pin = config, rank_rows, pin
        self.sampler = NegativeSampler(
            train.negative_sampler,
            num_items,
            train.negatives,
            popularity=None if popularity is None else popularity[1:],
            alpha=train.popularity_alpha,
            seed=config.seed,
        )
        self.log_q, self.in_batch_log_q = logq_corrections(config, self.sampler, popularity)

    def __call__(self, epoch: int, step: int, history: HistoryBatch | SequenceChunks, targets: np.ndarray) -> Batch:
        batch = make_batch(history, targets, self.sampler.draw(epoch, step), self.log_q, self.in_batch_log_q)
        batch.draw = noise_for_rank(self.config, self.config.train.batch_size, epoch, step, self.rank_rows, "cpu")
        return batch.pin_memory() if self.pin else batch


def logq_corrections(
    config: JobConfig, sampler: NegativeSampler, popularity: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """log expected count of each item among the sampled negatives and among the in-batch
    negatives (global batch size x its share of training events), or None where uncorrected.
    Uniform sampling alone needs none: a constant shift leaves the softmax unchanged."""
    train = config.train
    if not train.logq_correction or (train.negative_sampler == "uniform" and not train.in_batch_negatives):
        return None, None
    in_batch = None
    if train.in_batch_negatives:
        share = np.maximum(popularity.astype(np.float64), 1.0) / max(1.0, float(popularity[1:].sum()))
        in_batch = np.log(train.batch_size * share)
    return sampler.log_q, in_batch


def noise_for_rank(
    config: JobConfig, global_batch: int, epoch: int, step: int, rows: torch.Tensor, device: torch.device | str
) -> NoiseDraw:
    """The step's diffusion noise, drawn for the whole global batch; this rank takes its
    rows. The same sample gets the same t and eps whatever the world size."""
    draw = NoiseDraw.draw(
        global_batch,
        config.model.embedding_dim,
        config.model.diffusion_steps,
        generator(config.seed, "noise", epoch, step),
        guidance_dropout=config.model.guidance_dropout,
    )
    return draw.rows(rows, device)
