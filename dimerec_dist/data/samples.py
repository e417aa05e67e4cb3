"""Histories cut from flat item arrays, and the users of an evaluation split.

A training sample is (user, position p >= 1): the history is the user's training items
before p (the last `max_history` of them) and the target is the item at p; stream.py
lists the samples. Per prefix, `window` cuts each sample's own history. In sequence
mode, `cut_chunks` lays runs of one user's consecutive targets out as chunks, each read
once for all its targets. An evaluation user brings its whole history (to exclude seen
items) and its held-out target.
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


@dataclass
class SequenceChunks:
    """Chunks of users' sequences, left-aligned and zero-padded: ids (C, S), lengths (C,); and the
    queries of each chunk, the positions whose next item is a target: queries (C, Qc), query_counts (C,)."""

    ids: np.ndarray
    lengths: np.ndarray
    queries: np.ndarray
    query_counts: np.ndarray

    @staticmethod
    def concatenate(parts: list[SequenceChunks]) -> SequenceChunks:
        """Several cuts as one, padded to the widest."""

        def padded(arrays: list[np.ndarray]) -> np.ndarray:
            width = max(a.shape[1] for a in arrays)
            return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays])

        if len(parts) == 1:
            return parts[0]
        return SequenceChunks(
            padded([p.ids for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            padded([p.queries for p in parts]),
            np.concatenate([p.query_counts for p in parts]),
        )

    @property
    def query_mask(self) -> np.ndarray:
        return np.arange(self.queries.shape[1])[None, :] < self.query_counts[:, None]

    def histories(self, max_history: int) -> HistoryBatch:
        """Each query's window as a per-prefix history, left-aligned (Q, max_history): what the
        per-prefix mode reads for the same targets (the benchmark and the exactness tests)."""
        rows = np.repeat(np.arange(len(self.ids)), self.query_counts)
        queries = self.queries[self.query_mask]
        lengths = np.minimum(queries + 1, max_history)
        columns = np.arange(max_history)
        valid = columns[None, :] < lengths[:, None]
        positions = np.where(valid, (queries + 1 - lengths)[:, None] + columns[None, :], 0)
        return HistoryBatch(np.where(valid, self.ids[rows[:, None], positions], 0), lengths)

    @property
    def targets(self) -> np.ndarray:
        """The item after each query, chunk by chunk: the order of the samples they came from."""
        rows = np.repeat(np.arange(len(self.ids)), self.query_counts)
        return self.ids[rows, self.queries[self.query_mask] + 1]


def cut_chunks(
    flat: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    max_history: int,
    chunk_targets: int,
    span_limited: bool = False,
) -> SequenceChunks:
    """The samples (user start, target index) in order, as chunks: a run of one user's consecutive
    targets, at most `chunk_targets` of them, becomes one chunk with the items before its first
    target that its windows need, so that every target's window (chunk[max(0, q - N + 1) .. q],
    model/sequence_windows.py) is the same last `max_history` items the per-prefix mode reads.

    `span_limited` (the SASRec GEM, which reads a chunk from its first item): a chunk spans at most
    `max_history` items before its last target, and runs are cut to `max_history` targets; an early
    target of a chunk then reads fewer than `max_history` items, as SASRec trains."""
    count = len(starts)
    if count == 0:
        raise ValueError("no samples to cut into chunks")
    limit = min(chunk_targets, max_history) if span_limited else chunk_targets
    # A new run where the user changes, the targets stop being consecutive, or the run is full.
    breaks = np.ones(count, bool)
    breaks[1:] = (starts[1:] != starts[:-1]) | (ends[1:] != ends[:-1] + 1)
    run_id = np.cumsum(breaks) - 1
    first_of_run = np.flatnonzero(breaks)
    within = np.arange(count) - first_of_run[run_id]
    breaks |= within % limit == 0
    first = np.flatnonzero(breaks)
    last = np.append(first[1:], count) - 1
    user_start = starts[first]
    p0, p1 = ends[first] - user_start, ends[last] - user_start + 1  # targets p0..p1-1 of the user
    lo = np.maximum(0, (p1 - 1 - max_history) if span_limited else (p0 - max_history))
    lengths = p1 - lo
    width = int(lengths.max())
    columns = np.arange(width)
    valid = columns[None, :] < lengths[:, None]
    ids = np.where(valid, flat[np.where(valid, (user_start + lo)[:, None] + columns[None, :], 0)], 0)
    query_counts = p1 - p0
    query_columns = np.arange(int(query_counts.max()))
    queries = np.where(
        query_columns[None, :] < query_counts[:, None], (p0 - 1 - lo)[:, None] + query_columns[None, :], 0
    )
    return SequenceChunks(ids.astype(np.int64), lengths.astype(np.int64), queries.astype(np.int64), query_counts)


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
