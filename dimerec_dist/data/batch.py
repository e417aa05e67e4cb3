"""One rank's batch: ids as a KeyedJaggedTensor for the sharded item table, plus negatives.

The item table serves three features: the history (jagged), the target (one id per
sample) and the step's shared negatives (all attached to the first sample, so the
table looks them up once per rank). Jagged values come straight from the padded ids.
Negatives are drawn with replacement, so a large draw repeats ids (popular ones above
all): the table looks each distinct id up once, and `negative_rows` spreads the rows
back over the draw, which keeps the softmax the same and the lookup and table update
smaller.

In sequence mode the history feature carries the chunks (samples.SequenceChunks), each
read once for all its targets; the targets are items of the chunks, so the target
feature is empty and the model takes their rows from the chunks' (`queries`).

A Batch is TorchRec's Pipelineable (to, record_stream): the train pipeline copies it to the
device and starts its id all-to-all while the step before it trains. It carries the step's
diffusion noise for its samples (`draw`), so one object is all a step needs.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from dimerec_dist.data.samples import HistoryBatch, SequenceChunks
from dimerec_dist.model.dimerec import NoiseDraw

FEATURES = ("history", "target", "negatives")


@dataclass
class Batch(Pipelineable):
    kjt: KeyedJaggedTensor
    mask: torch.Tensor  # (B, N) True on real history positions (sequence mode: (C, S) of the chunks)
    target_ids: torch.Tensor  # (B,) (sequence mode: (Q,), the item after each query)
    negative_ids: torch.Tensor  # (M,) the draw, repeats included
    negative_rows: torch.Tensor  # (M,) each draw's row among the looked-up distinct negatives
    negative_log_q: torch.Tensor | None  # (M,) log expected count, for logQ correction
    target_log_q: torch.Tensor | None  # (B,)
    in_batch_log_q: torch.Tensor | None = None  # (B,) log expected count of each target among the in-batch negatives
    queries: torch.Tensor | None = None  # sequence mode: (C, Qc) chunk positions whose next item is a target
    query_mask: torch.Tensor | None = None  # (C, Qc) True on real queries

    draw: NoiseDraw | None = None  # the step's diffusion noise for these samples (training only)

    @property
    def is_sequence(self) -> bool:
        return self.queries is not None

    @property
    def size(self) -> int:
        return int(self.target_ids.shape[0])

    def _tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("kjt", "draw")}

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        moved = {k: None if t is None else t.to(device, non_blocking=non_blocking) for k, t in self._tensors().items()}
        draw = None if self.draw is None else self.draw.to(device, non_blocking=non_blocking)
        return Batch(kjt=self.kjt.to(device, non_blocking=non_blocking), draw=draw, **moved)

    def pin_memory(self) -> Batch:
        """Page-locked host copies, so the copy to a GPU runs asynchronously (GPU machines only)."""
        pinned = {k: None if t is None else t.pin_memory() for k, t in self._tensors().items()}
        draw = None if self.draw is None else self.draw.pin_memory()
        return Batch(kjt=self.kjt.pin_memory(), draw=draw, **pinned)

    def record_stream(self, stream: torch.Stream) -> None:
        """Tell the caching allocator the batch is used on `stream` (TorchRec's copy stream)."""
        self.kjt.record_stream(stream)
        for t in self._tensors().values():
            if t is not None:
                t.record_stream(stream)
        if self.draw is not None:
            self.draw.record_stream(stream)


def make_batch(
    history: HistoryBatch | SequenceChunks,
    targets: np.ndarray,
    negative_ids: np.ndarray,
    log_q: np.ndarray | None = None,
    in_batch_log_q: np.ndarray | None = None,
) -> Batch:
    """`history`: per-prefix histories, or sequence mode's chunks; `targets`: one per sample.
    `log_q`, `in_batch_log_q`: per item id, log of its expected count among the sampled and the
    in-batch negatives (for logQ correction); None leaves the logits uncorrected."""
    sequence = isinstance(history, SequenceChunks)
    size, width = history.ids.shape  # rows: samples, or chunks
    mask = np.arange(width)[None, :] < history.lengths[:, None]
    history_values = history.ids[mask]  # row-major: each row's items in order
    distinct, negative_rows = np.unique(negative_ids, return_inverse=True)
    negative_lengths = np.zeros(size, np.int64)
    if size:
        negative_lengths[0] = len(distinct)
    looked_up_targets = np.zeros(0, np.int64) if sequence else targets  # a chunk holds its targets' rows
    values = np.concatenate([history_values, looked_up_targets, distinct]).astype(np.int64)
    target_lengths = np.full(size, 0 if sequence else 1, np.int64)
    lengths = np.concatenate([history.lengths, target_lengths, negative_lengths])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURES), values=torch.from_numpy(values), lengths=torch.from_numpy(lengths.astype(np.int32))
    )
    return Batch(
        kjt=kjt,
        mask=torch.from_numpy(mask),
        target_ids=torch.from_numpy(targets.astype(np.int64)),
        negative_ids=torch.from_numpy(negative_ids.astype(np.int64)),
        negative_rows=torch.from_numpy(negative_rows.reshape(-1).astype(np.int64)),
        negative_log_q=None if log_q is None else torch.from_numpy(log_q[negative_ids].astype(np.float32)),
        target_log_q=None if log_q is None else torch.from_numpy(log_q[targets].astype(np.float32)),
        in_batch_log_q=None if in_batch_log_q is None else torch.from_numpy(in_batch_log_q[targets].astype(np.float32)),
        queries=torch.from_numpy(history.queries) if sequence else None,
        query_mask=torch.from_numpy(history.query_mask) if sequence else None,
    )


class NegativeSampler:
    """Negatives shared by every sample of a step, drawn identically on every rank.

    `uniform` over items 1..I, or `popularity`: proportional to count ** alpha. The draw
    depends only on (seed, epoch, step), so world sizes 1 and N see the same negatives.
    `log_q` is log(M * q_i), the expected count of item i among the M draws (the logQ
    correction of sampled softmax).
    """

    def __init__(
        self,
        kind: str,
        num_items: int,
        count: int,
        popularity: np.ndarray | None = None,
        alpha: float = 0.75,
        seed: int = 0,
    ):
        if kind not in ("uniform", "popularity"):
            raise ValueError(f"unknown negative sampler {kind!r} (uniform or popularity)")
        self.kind, self.num_items, self.count, self.seed = kind, num_items, count, seed
        if kind == "popularity":
            if popularity is None or len(popularity) != num_items:
                raise ValueError("the popularity sampler needs one count per item")
            weights = np.power(popularity.astype(np.float64) + 1.0, alpha)  # +1: every item can be drawn
            q = weights / weights.sum()
            self.cdf = np.cumsum(q)

    @functools.cached_property
    def log_q(self) -> np.ndarray:
        """Per item id; made on first use (a float64 per item: 400 MB for 50M items)."""
        if self.kind == "popularity":
            q_full = np.diff(self.cdf, prepend=0.0)
            q_full = np.concatenate([[1.0], q_full])  # index 0 (padding) is never drawn
        else:
            q_full = np.full(self.num_items + 1, 1.0 / self.num_items)
        return np.log(self.count * q_full)

    def draw(self, epoch: int, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, step, 0x9E6])
        if self.kind == "uniform":
            return rng.integers(1, self.num_items + 1, self.count)
        return 1 + np.minimum(np.searchsorted(self.cdf, rng.random(self.count)), self.num_items - 1)
