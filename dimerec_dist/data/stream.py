"""The data plan and the stream of training batches each rank reads.

The plan: the train split's row groups (a few thousand users each) are dealt, every
epoch in an order shuffled from (seed, epoch), to `streams` virtual streams, balancing
their sample counts. A global batch is one slice of `global_batch / streams` samples
from every stream; rank r reads the streams v with v % world_size == r. So the global
batch is the same for any world size that divides `streams`, every rank runs the same
number of steps, and nothing is read twice.

Reading: a row group is decoded into its users' items and a shuffled list of samples
(user, position); windows of history are cut only when a batch is built. In sequence
mode the shuffle moves runs of `chunk_targets` consecutive targets of one user, kept in
order, so a batch slice holds runs that become chunks (samples.cut_chunks); the plan
counts targets as in `all` mode, so steps, streams and resumption are unchanged. Decoding runs
in this process (`local`) or in Ray tasks (`ray`), with a bounded window of row groups in
flight per rank. Ray Data is not used: it is not supported inside multi-process torchrun,
Ray tasks are.

Position: (epoch, step) determines everything, so a resumed job continues exactly where
it stopped; whole row groups are skipped from the manifest's counts without reading them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dimerec_dist.config import DATA_BACKENDS, SAMPLE_MODES
from dimerec_dist.data.samples import HistoryBatch, SequenceChunks, cut_chunks, flat_lists, window
from dimerec_dist.data.schema import DataError, Manifest


@dataclass(frozen=True)
class RowGroup:
    id: int
    file: str
    index: int
    samples: int  # training samples with sample_mode=all (and sequence: the same targets)
    trainable: int  # users with >= 2 items: samples with sample_mode=random_cut
    part: int = 0  # a heavy row group is planned as `parts` slices of its shuffled samples
    parts: int = 1


def part_bounds(count: int, part: int, parts: int) -> tuple[int, int]:
    """Slice `part` of `parts` of `count` shuffled samples: [lo, hi), sizes differing by one at most."""
    return count * part // parts, count * (part + 1) // parts


def split_heavy(groups: list[RowGroup], streams: int, samples_of) -> list[RowGroup]:
    """A row group far heavier than the others (one user with 100,000 events) planned as slices.

    Row groups are dealt whole, and a stream holding one huge group would leave the others far
    shorter: the shortest decides the steps, so most samples would be dropped. A group holding
    more than 4x the median group's samples is cut into slices the median's size (at most
    32 x streams of them: each slice decodes the whole group), so the streams balance as if the
    heavy user were many ordinary ones. Datasets whose groups are alike are planned as before."""
    counts = np.array([samples_of(g) for g in groups])
    median = max(float(np.median(counts)), 1.0)
    planned = []
    for group, count in zip(groups, counts):
        parts = min(int(np.ceil(count / median)), 32 * streams) if count > 4 * median else 1
        for part in range(parts):
            low, high = part_bounds(group.samples, part, parts)
            first, last = part_bounds(group.trainable, part, parts)
            samples, trainable = high - low, last - first
            # The row group's id for every slice: its samples are shuffled from it, alike in every slice.
            planned.append(RowGroup(group.id, group.file, group.index, int(samples), int(trainable), part, parts))
    return planned if len(planned) > len(groups) else groups


@dataclass
class Decoded:
    """One decoded row group: users' items, flat, and its samples in shuffled order; in sequence
    mode in runs of one user's consecutive targets, run r being samples runs[r]..runs[r + 1]."""

    items: np.ndarray
    offsets: np.ndarray
    seqs: np.ndarray
    positions: np.ndarray
    runs: np.ndarray | None = None


def decode_group(
    file: str,
    index: int,
    group_id: int,
    seed: int,
    epoch: int,
    sample_mode: str,
    num_items: int,
    chunk_targets: int = 0,
    part: int = 0,
    parts: int = 1,
) -> Decoded:
    """Read one row group and list its samples, shuffled from (seed, epoch, group); of a heavy group
    split by the plan, slice `part` of `parts` of them (every slice shuffled alike: they partition it).

    Ids are checked here, where they are read: an id outside 1..num_items would otherwise
    reach the embedding kernel as an out-of-bounds row."""
    try:
        column = pq.ParquetFile(file).read_row_group(index, columns=["items"]).column("items").combine_chunks()
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise DataError(f"{file}: cannot read row group {index} ({str(exc).splitlines()[0]})") from None
    if not (pa.types.is_list(column.type) and column.type.value_type == pa.int64()):
        raise DataError(f"{file}: column 'items' has type {column.type}, expected list<int64>")
    if column.null_count or column.flatten().null_count:
        raise DataError(f"{file}: row group {index} holds null item ids")
    items, offsets = flat_lists(column)
    if len(items) and (items.min() < 1 or items.max() > num_items):
        bad = int(np.flatnonzero((items < 1) | (items > num_items))[0])
        row = int(np.searchsorted(offsets, bad, side="right") - 1)
        raise DataError(
            f"{file}: row group {index}, row {row}: item id {int(items[bad])} outside the manifest's 1..{num_items}"
        )
    lengths = np.diff(offsets)
    rng = np.random.default_rng([seed, epoch, group_id, 0x57])
    if sample_mode in ("all", "sequence"):
        per_seq = np.maximum(lengths - 1, 0)
        seqs = np.repeat(np.arange(len(lengths)), per_seq)
        first = np.concatenate([[0], np.cumsum(per_seq)])[:-1]
        positions = np.arange(len(seqs)) - first[seqs] + 1
    else:
        seqs = np.flatnonzero(lengths >= 2)
        positions = 1 + (rng.random(len(seqs)) * (lengths[seqs] - 1)).astype(np.int64)
    if sample_mode == "sequence":
        runs = np.flatnonzero((positions - 1) % chunk_targets == 0)  # each user's targets, chunk_targets at a time
        decoded = shuffled_runs(Decoded(items, offsets, seqs, positions, np.append(runs, len(seqs))), rng)
    else:
        order = rng.permutation(len(seqs))
        decoded = Decoded(items, offsets, seqs[order], positions[order])
    return decoded if parts == 1 else slice_of(decoded, *part_bounds(len(decoded.seqs), part, parts))


def slice_of(decoded: Decoded, lo: int, hi: int) -> Decoded:
    """Samples lo..hi of a decoded group (a run cut at a slice's edge becomes two runs)."""
    runs = None
    if decoded.runs is not None:
        runs = np.unique(np.clip(decoded.runs, lo, hi)) - lo
    return Decoded(decoded.items, decoded.offsets, decoded.seqs[lo:hi], decoded.positions[lo:hi], runs)


def shuffled_runs(decoded: Decoded, rng: np.random.Generator) -> Decoded:
    """The runs in a shuffled order, each run's samples kept in order."""
    runs = decoded.runs
    sizes = np.diff(runs)
    order = rng.permutation(len(sizes))
    new_sizes = sizes[order]
    new_runs = np.concatenate([[0], np.cumsum(new_sizes)])
    # Sample i of new run k is sample runs[order[k]] + i of the old order.
    within = np.arange(runs[-1]) - np.repeat(new_runs[:-1], new_sizes)
    index = np.repeat(runs[:-1][order], new_sizes) + within
    return Decoded(decoded.items, decoded.offsets, decoded.seqs[index], decoded.positions[index], new_runs)


def row_groups(manifest: Manifest) -> list[RowGroup]:
    groups = []
    for entry in manifest.data["files"]["train"]:
        for index, group in enumerate(entry.get("row_groups", [])):
            groups.append(
                RowGroup(len(groups), str(manifest.root / entry["path"]), index, group["samples"], group["trainable"])
            )
    if not groups:
        raise DataError(f"{manifest.root / 'manifest.json'}: the train split lists no row groups")
    return groups


class DataPlan:
    def __init__(
        self,
        groups: list[RowGroup],
        streams: int,
        global_batch: int,
        seed: int,
        sample_mode: str,
        num_items: int,
        mix: int = 4,
        chunk_targets: int = 0,
    ):
        if sample_mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample mode {sample_mode!r} ({', '.join(SAMPLE_MODES)})")
        if global_batch % streams:
            raise DataError(f"the global batch {global_batch} must be a multiple of data.streams={streams}")
        self.groups, self.streams, self.seed, self.sample_mode = groups, streams, seed, sample_mode
        if sample_mode == "sequence" and chunk_targets < 1:
            raise ValueError("sequence mode needs chunk_targets >= 1")
        self.num_items, self.mix, self.chunk_targets = num_items, mix, chunk_targets
        self.per_stream = global_batch // streams
        self.groups = split_heavy(groups, streams, self.samples_of)

    def decode_arguments(self, group: RowGroup, epoch: int) -> tuple:
        """decode_group's arguments for one row group (a Ray task's too: plain values only)."""
        return (
            group.file,
            group.index,
            group.id,
            self.seed,
            epoch,
            self.sample_mode,
            self.num_items,
            self.chunk_targets,
            group.part,
            group.parts,
        )

    def samples_of(self, group: RowGroup) -> int:
        return group.trainable if self.sample_mode == "random_cut" else group.samples

    def assignment(self, epoch: int) -> list[list[RowGroup]]:
        """Row groups of each stream this epoch: shuffled, then dealt to the stream with the fewest samples."""
        order = np.random.default_rng([self.seed, epoch, 0x91A]).permutation(len(self.groups))
        streams: list[list[RowGroup]] = [[] for _ in range(self.streams)]
        load = np.zeros(self.streams, np.int64)
        for index in order:
            target = int(np.argmin(load))  # ties go to the lowest stream: deterministic
            streams[target].append(self.groups[index])
            load[target] += self.samples_of(self.groups[index])
        return streams

    def steps(self, epoch: int) -> int:
        """Steps every rank runs this epoch: the shortest stream decides (the others' tails are dropped)."""
        shortest = min(sum(self.samples_of(g) for g in stream) for stream in self.assignment(epoch))
        return shortest // self.per_stream

    def dropped_share(self, epoch: int) -> float:
        """The share of the epoch's samples no step reads (the streams' tails past the shortest)."""
        total = sum(self.samples_of(g) for g in self.groups)
        return 1.0 - self.steps(epoch) * self.per_stream * self.streams / max(total, 1)


class _LocalDecoder:
    def __init__(self, plan: DataPlan, window_size: int):
        self.plan = plan

    def submit(self, group: RowGroup, epoch: int) -> tuple[RowGroup, int]:
        return (group, epoch)

    def result(self, handle: tuple[RowGroup, int]) -> Decoded:
        group, epoch = handle
        return decode_group(*self.plan.decode_arguments(group, epoch))


class _RayDecoder:
    """Decoding as Ray tasks; connects to RAY_ADDRESS or starts a local Ray."""

    def __init__(self, plan: DataPlan, window_size: int):
        import ray

        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                **({} if address else {"num_cpus": max(window_size, 1)}),
            )
        self.ray, self.plan = ray, plan
        self.task = ray.remote(num_cpus=1)(decode_group)

    def submit(self, group: RowGroup, epoch: int) -> Any:  # a Ray ObjectRef
        return self.task.remote(*self.plan.decode_arguments(group, epoch))

    def result(self, handle: Any) -> Decoded:  # a Ray ObjectRef
        return self.ray.get(handle)


def merge_shuffled(parts: list[Decoded], rng: np.random.Generator) -> Decoded:
    """Several decoded row groups as one, their samples (in sequence mode: their runs) shuffled together."""
    item_shift = np.cumsum([0] + [len(p.items) for p in parts])
    seq_shift = np.cumsum([0] + [len(p.offsets) - 1 for p in parts])
    items = np.concatenate([p.items for p in parts])
    offsets = np.concatenate([p.offsets[:-1] + shift for p, shift in zip(parts, item_shift)] + [[item_shift[-1]]])
    seqs = np.concatenate([p.seqs + shift for p, shift in zip(parts, seq_shift)])
    positions = np.concatenate([p.positions for p in parts])
    if parts[0].runs is not None:
        sample_shift = np.cumsum([0] + [len(p.seqs) for p in parts])
        runs = np.concatenate([p.runs[:-1] + shift for p, shift in zip(parts, sample_shift)] + [[sample_shift[-1]]])
        return shuffled_runs(Decoded(items, offsets, seqs, positions, runs), rng)
    order = rng.permutation(len(seqs))
    return Decoded(items, offsets, seqs[order], positions[order])


class StreamCursor:
    """One virtual stream in one epoch: hands out its next samples, decoding ahead.

    The stream's row groups are read in chunks of `mix` consecutive groups whose samples
    are shuffled together, so a batch slice mixes several groups' users. Chunks are the
    unit of resumption: whole chunks are skipped from the manifest's counts, unread.
    """

    def __init__(
        self,
        groups: list[RowGroup],
        epoch: int,
        decoder: _LocalDecoder | _RayDecoder,
        ahead: int,
        skip: int,
        plan: DataPlan,
    ):
        self.epoch, self.decoder, self.plan, self.ahead = epoch, decoder, plan, max(ahead, 1)
        chunks = [groups[i : i + plan.mix] for i in range(0, len(groups), plan.mix)]
        while chunks and sum(plan.samples_of(g) for g in chunks[0]) <= skip:
            skip -= sum(plan.samples_of(g) for g in chunks.pop(0))
        self.todo = deque(chunks)
        self.in_flight: deque = deque()  # (chunk, handles)
        self.current: Decoded | None = None
        self.cursor = 0
        self._fill()
        self._drop = skip

    def _fill(self) -> None:
        while self.todo and sum(len(chunk) for chunk, _ in self.in_flight) < self.ahead:
            chunk = self.todo.popleft()
            self.in_flight.append((chunk, [self.decoder.submit(group, self.epoch) for group in chunk]))

    def _next_chunk(self) -> None:
        if not self.in_flight:
            raise RuntimeError("a stream ran out of samples before the planned number of steps")
        chunk, handles = self.in_flight.popleft()
        self._fill()
        first = chunk[0]  # a slice of a split group seeds by its part too (a whole group as before)
        rng = np.random.default_rng(
            [self.plan.seed, self.epoch, first.id, 0x313] + ([first.part] if first.parts > 1 else [])
        )
        self.current, self.cursor = merge_shuffled([self.decoder.result(h) for h in handles], rng), 0

    def _advance(self, count: int, pieces: list | None) -> None:
        while count:
            if self.current is None or self.cursor == len(self.current.seqs):
                self._next_chunk()
                continue
            n = min(count, len(self.current.seqs) - self.cursor)
            if pieces is not None:
                seqs = self.current.seqs[self.cursor : self.cursor + n]
                starts = self.current.offsets[seqs]
                positions = self.current.positions[self.cursor : self.cursor + n]
                pieces.append((self.current.items, starts, starts + positions))
            self.cursor += n
            count -= n

    def take(self, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(items, history starts, history ends = target index) pieces holding the next `count` samples."""
        if self._drop:
            self._advance(self._drop, None)
            self._drop = 0
        pieces: list = []
        self._advance(count, pieces)
        return pieces


class TrainStream:
    """The batches one rank trains on: its streams' slices of every global batch."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        max_history: int,
        global_batch: int,
        streams: int,
        world_size: int,
        rank: int,
        seed: int,
        sample_mode: str = "all",
        backend: str = "local",
        window_size: int = 4,
        mix: int = 4,
        chunk_targets: int = 0,
        span_limited: bool = False,
    ):
        """`chunk_targets`, `span_limited`: sequence mode's chunks (samples.cut_chunks)."""
        streams = streams or world_size
        if streams % world_size:
            raise DataError(f"data.streams={streams} must be a multiple of the world size {world_size}")
        if backend not in DATA_BACKENDS:
            raise DataError(f"unknown data backend {backend!r} ({', '.join(DATA_BACKENDS)})")
        self.plan = DataPlan(
            row_groups(manifest), streams, global_batch, seed, sample_mode, manifest.num_items, mix, chunk_targets
        )
        self.max_history, self.span_limited = max_history, span_limited
        self.owned = list(range(rank, streams, world_size))
        self.window_size = window_size
        decoder_class = _RayDecoder if backend == "ray" else _LocalDecoder
        self.decoder = decoder_class(self.plan, window_size)
        per = self.plan.per_stream
        # Rows of the global batch this rank holds: stream v's slice is [v * per, (v + 1) * per).
        self.global_rows = np.concatenate([np.arange(v * per, (v + 1) * per) for v in self.owned])

    def steps(self, epoch: int) -> int:
        return self.plan.steps(epoch)

    def batches(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[int, HistoryBatch | SequenceChunks, np.ndarray]]:
        """(step, histories or chunks, targets) for steps start_step.. of the epoch."""
        assignment = self.plan.assignment(epoch)
        per = self.plan.per_stream
        ahead = max(-(-self.window_size // len(self.owned)), self.plan.mix)
        cursors = [
            StreamCursor(assignment[v], epoch, self.decoder, ahead, start_step * per, self.plan) for v in self.owned
        ]
        for step in range(start_step, self.plan.steps(epoch)):
            pieces = [piece for cursor in cursors for piece in cursor.take(per)]
            yield (step, *self._cut(pieces))

    def _cut(self, pieces: list) -> tuple[HistoryBatch | SequenceChunks, np.ndarray]:
        if self.plan.sample_mode == "sequence":
            return self._cut_chunks(pieces)
        ids, lengths, targets = [], [], []
        for items, starts, ends in pieces:
            history = window(items, starts, ends, self.max_history)
            ids.append(history.ids)
            lengths.append(history.lengths)
            targets.append(items[ends])
        return HistoryBatch(np.concatenate(ids), np.concatenate(lengths)), np.concatenate(targets)

    def _cut_chunks(self, pieces: list) -> tuple[SequenceChunks, np.ndarray]:
        """The slice's targets as chunks: each piece (one decoded chunk's consecutive samples) cut on
        its own, so a run never crosses pieces."""
        cut = [
            cut_chunks(items, starts, ends, self.max_history, self.plan.chunk_targets, self.span_limited)
            for items, starts, ends in pieces
        ]
        return SequenceChunks.concatenate(cut), np.concatenate([items[ends] for items, _, ends in pieces])
