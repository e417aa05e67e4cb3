"""Histories cut from flat item arrays, and the users of an evaluation split.

A training sample is (user, position p >= 1): the history is the user's training items
before p (the last `max_history` of them) and the target is the item at p; stream.py
lists the samples, `window` cuts their histories. An evaluation user brings its whole
history (to exclude seen items) and its held-out target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


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


def flat_lists(column: pa.ChunkedArray | pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, honouring slices (never `.values`)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy()
    lengths = array.value_lengths().to_numpy()
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class EvaluationUsers:
    """The users of a valid/test split: model input (last max_history items), every item
    seen (for exclusion) and the held-out target - or, under the user-split protocol,
    several targets (`target_items[target_offsets[u]:target_offsets[u + 1]]`)."""

    def __init__(self, table: pa.Table, max_history: int):
        self.users = table.column("user").to_numpy()
        self.items, self.offsets = flat_lists(table.column("history"))
        self.multi_target = "targets" in table.column_names
        if self.multi_target:
            self.target_items, self.target_offsets = flat_lists(table.column("targets"))
            self.targets = self.target_items[self.target_offsets[:-1]]  # the first: the batch's target feature
        else:
            self.targets = table.column("target").to_numpy()
            self.target_items, self.target_offsets = self.targets, np.arange(len(self.targets) + 1)
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, rows: np.ndarray) -> tuple[HistoryBatch, list[np.ndarray], np.ndarray]:
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        seen = [self.items[s:e] for s, e in zip(starts, ends)]
        return window(self.items, starts, ends, self.max_history), seen, self.targets[rows]
