"""Training samples and evaluation users cut from a prepared dataset, and the data plan.

A training sample is (user, position p >= 1): the history is the user's training items
before p (the last `max_history` of them) and the target is the item at p. The plan
splits each epoch's shuffled samples into global batches, and each global batch into
one contiguous slice per rank, so any world size sees the same global batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SAMPLE_MODES = ("all", "random_cut")


@dataclass
class HistoryBatch:
    """Left-aligned, zero-padded histories: ids (B, N) and lengths (B,)."""

    ids: np.ndarray
    lengths: np.ndarray


def window(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_history: int) -> HistoryBatch:
    """The last `max_history` items of flat[starts[b]:ends[b]] for each row b, left-aligned."""
    lengths = np.minimum(ends - starts, max_history)
    first = ends - lengths
    columns = np.arange(max_history)
    index = first[:, None] + columns[None, :]
    valid = columns[None, :] < lengths[:, None]
    ids = np.where(valid, flat[np.where(valid, index, 0)], 0)
    return HistoryBatch(ids=ids.astype(np.int64), lengths=lengths.astype(np.int64))


def _flat_lists(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, honouring slices (never `.values`)."""
    array = column.combine_chunks()
    values = array.flatten().to_numpy()
    lengths = array.value_lengths().to_numpy()
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class TrainingSamples:
    def __init__(self, train: pa.Table, max_history: int):
        self.items, self.offsets = _flat_lists(train.column("items"))
        self.max_history = max_history
        lengths = np.diff(self.offsets)
        # Every position p >= 1 of every sequence.
        self.sample_seq = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
        first_of_seq = np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0))])[:-1]
        self.sample_pos = np.arange(len(self.sample_seq)) - first_of_seq[self.sample_seq] + 1
        self.trainable_seqs = np.flatnonzero(lengths >= 2)
        self.seq_lengths = lengths

    def __len__(self) -> int:
        return len(self.sample_seq)

    def epoch_order(self, mode: str, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sequence, position) of each sample of the epoch, shuffled from (seed, epoch).

        `all`: every position once. `random_cut` (ComiRec): one random position per user.
        """
        rng = np.random.default_rng([seed, epoch, 0x5A])
        if mode == "all":
            order = rng.permutation(len(self))
            return self.sample_seq[order], self.sample_pos[order]
        if mode == "random_cut":
            seqs = rng.permutation(self.trainable_seqs)
            positions = 1 + (rng.random(len(seqs)) * (self.seq_lengths[seqs] - 1)).astype(np.int64)
            return seqs, positions
        raise ValueError(f"unknown sample mode {mode!r} ({', '.join(SAMPLE_MODES)})")

    def batch(self, seqs: np.ndarray, positions: np.ndarray) -> tuple[HistoryBatch, np.ndarray]:
        starts = self.offsets[seqs]
        history = window(self.items, starts, starts + positions, self.max_history)
        return history, self.items[starts + positions]


@dataclass
class StepPlan:
    """Which samples each rank reads at each step of an epoch."""

    seqs: np.ndarray
    positions: np.ndarray
    global_batch: int
    world_size: int

    @property
    def steps(self) -> int:
        return len(self.seqs) // self.global_batch  # the ragged tail is dropped: all ranks step together

    def rank_slice(self, step: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
        per_rank = self.global_batch // self.world_size
        start = step * self.global_batch + rank * per_rank
        return self.seqs[start:start + per_rank], self.positions[start:start + per_rank]


class EvaluationUsers:
    """The users of a valid/test split: model input (last max_history items), every item
    seen (for exclusion) and the held-out target."""

    def __init__(self, table: pa.Table, max_history: int):
        self.users = table.column("user").to_numpy()
        self.items, self.offsets = _flat_lists(table.column("history"))
        self.targets = table.column("target").to_numpy()
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, rows: np.ndarray) -> tuple[HistoryBatch, list[np.ndarray], np.ndarray]:
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        seen = [self.items[s:e] for s, e in zip(starts, ends)]
        return window(self.items, starts, ends, self.max_history), seen, self.targets[rows]
