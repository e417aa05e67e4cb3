"""dimerec-prepare: raw interaction logs -> the prepared dataset the trainer reads.

Pipeline: read events (user, item, time, file order) -> optional k-core filter -> dense
ids (items 1..I in order of first appearance, 0 kept for padding) -> each user's items in
time order (ties keep file order) -> leave-one-out split (last item = test, second to
last = validation; or `--split user`, ComiRec's held-out users) -> Parquet shards +
items.parquet + manifest.json.

Memory does not grow with the number of events: a first pass streams the input, gives
users and items dense codes and spills the events into buckets by user; a second pass
sorts one bucket at a time and writes the splits. What stays in memory is one bucket
and the id dictionaries (which grow with users and items, not with events).

Users with fewer than 3 items have no held-out item: all their items go to training.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dimerec_dist.data.readers import FORMATS, BadLines, ReadOptions, read_events
from dimerec_dist.data.schema import (
    EVAL_SCHEMA,
    ITEMS_SCHEMA,
    SCHEMA_VERSION,
    SPLITS,
    TRAIN_SCHEMA,
    USER_SPLIT_EVAL_SCHEMA,
    DataError,
    split_schema,
    write_parquet,
)
from dimerec_dist.data.writer import SplitWriter
from dimerec_dist.runtime.cli_numbers import integer
from dimerec_dist.runtime.integrity import file_sha256
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level, setup_command_logging
from dimerec_dist.runtime.output_dir import OutputError, begin, check_target, claim, os_error_line, publish
from dimerec_dist.runtime.storage import StorageError, download, exists, is_remote, local_path, upload_dir

log = logging.getLogger("dimerec.prepare")
# The columns each column-named format reads unless told otherwise (--user-col, ...).
DEFAULT_COLUMNS = {"events": ("user", "item", "time"), "recbole": ("user_id", "item_id", "timestamp")}
BUCKET_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("time", pa.float64()), ("order", pa.int64())])


@dataclass
class PrepareOptions:
    format: str
    input: Path | str  # a path, or a URI (s3://, gs://, ...)
    out: Path | str
    kcore: int = 0
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = "time"
    rows_per_shard: int = 1_000_000
    row_group_size: int = 2048
    skip_bad_lines: bool = False
    buckets: int = 0  # 0: about 2M events per bucket, estimated from the input
    split: str = "leave-one-out"  # or "user": ComiRec's protocol (held-out users, 80% in / 20% targets)
    overwrite: bool = False  # replace a non-empty `out` (atomically: written beside it, then swapped in)
    delimiter: str | None = None  # events CSV: None is "," for .csv, a tab for .tsv


class Codes:
    """Dense codes 0.. in order of first appearance, assigned chunk by chunk."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def encode(self, column: pa.ChunkedArray) -> np.ndarray:
        encoded = pc.dictionary_encode(column).combine_chunks()  # chunk-local codes, first appearance order
        uniques = encoded.dictionary.to_pylist()
        index = self.index
        to_global = np.fromiter((index.setdefault(u, len(index)) for u in uniques), np.int64, len(uniques))
        return to_global[encoded.indices.to_numpy()]

    def raw(self) -> np.ndarray:
        return np.array(list(self.index), dtype=object)

    def __len__(self) -> int:
        return len(self.index)


class Buckets:
    """Events spilled to disk in Arrow IPC files, one per bucket of users (user code % count)."""

    def __init__(self, root: Path, count: int):
        self.root, self.count = root, count
        root.mkdir(parents=True, exist_ok=True)
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def path(self, bucket: int) -> Path:
        return self.root / f"bucket-{bucket:05d}.arrow"

    def append(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, order: np.ndarray) -> None:
        bucket_of = users % self.count
        sort = np.argsort(bucket_of, kind="stable")
        bounds = np.searchsorted(bucket_of[sort], np.arange(self.count + 1))
        for bucket in np.flatnonzero(np.diff(bounds)):
            rows = sort[bounds[bucket] : bounds[bucket + 1]]
            batch = pa.record_batch([users[rows], items[rows], times[rows], order[rows]], schema=BUCKET_SCHEMA)
            if bucket not in self._writers:
                self._writers[bucket] = pa.ipc.new_file(self.path(bucket), BUCKET_SCHEMA)
            self._writers[bucket].write_batch(batch)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def read(self, bucket: int) -> dict[str, np.ndarray] | None:
        if not self.path(bucket).is_file():
            return None
        with pa.memory_map(str(self.path(bucket))) as source:
            table = pa.ipc.open_file(source).read_all()
        return {name: table.column(name).to_numpy() for name in BUCKET_SCHEMA.names}

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


EVENTS_PER_BUCKET = 2_000_000  # ~64 MB of spilled columns: what pass 2 holds and sorts at once


def estimated_events(path: Path) -> int:
    """Events in the input, from Parquet footers (exact) or text size (~16 bytes a event)."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    total = 0
    for file in files:
        if file.suffix == ".parquet":
            try:
                total += pq.ParquetFile(file).metadata.num_rows
                continue
            except (pa.ArrowInvalid, OSError):
                pass  # unreadable: the reader names it properly in pass 1
        total += file.stat().st_size // 16
    return total


def bucket_count(options: PrepareOptions) -> int:
    """Enough buckets that one holds ~2M events, so memory stays flat as the log grows."""
    if options.buckets:
        return options.buckets
    if not options.input.exists():
        return 1
    return max(1, min(4096, math.ceil(estimated_events(options.input) / EVENTS_PER_BUCKET)))


# --------------------------------------------------------------------------- passes


def spill_events(options: PrepareOptions, buckets: Buckets, bad: BadLines) -> tuple[Codes, Codes, int]:
    """Pass 1: stream the input, code users and items, spill events to buckets."""
    users, items, order = Codes(), Codes(), 0
    reader = read_events(
        ReadOptions(
            options.format, options.input, options.user_col, options.item_col, options.time_col, bad, options.delimiter
        )
    )
    started = time.time()
    for chunk in reader:
        n = chunk.num_rows
        buckets.append(
            users.encode(chunk.column("user")),
            items.encode(chunk.column("item")),
            chunk.column("time").to_numpy(),
            np.arange(order, order + n),
        )
        order += n
        log.info(
            "read %d events (%.0f/s), %d users, %d items",
            order,
            order / max(time.time() - started, 1e-9),
            len(users),
            len(items),
        )
    buckets.close()
    if order == 0:
        raise DataError(f"{options.input}: holds no events")
    return users, items, order


def kcore_filter(buckets: Buckets, num_users: int, num_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Users and items kept by the iterative k-core: every kept one has >= k events among kept events."""
    user_ok, item_ok = np.ones(num_users, bool), np.ones(num_items, bool)
    while True:
        user_counts, item_counts = np.zeros(num_users, np.int64), np.zeros(num_items, np.int64)
        for bucket in range(buckets.count):
            events = buckets.read(bucket)
            if events is None:
                continue
            kept = user_ok[events["user"]] & item_ok[events["item"]]
            user_counts += np.bincount(events["user"][kept], minlength=num_users)
            item_counts += np.bincount(events["item"][kept], minlength=num_items)
        new_user_ok, new_item_ok = user_ok & (user_counts >= k), item_ok & (item_counts >= k)
        if np.array_equal(new_user_ok, user_ok) and np.array_equal(new_item_ok, item_ok):
            return user_ok, item_ok
        user_ok, item_ok = new_user_ok, new_item_ok


def dense_ids(buckets: Buckets, user_ok: np.ndarray, item_ok: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """New ids for the kept users (from 0) and items (from `first`), in order of first kept appearance."""
    never = np.iinfo(np.int64).max
    first_user, first_item = np.full(len(user_ok), never), np.full(len(item_ok), never)
    for bucket in range(buckets.count):
        events = buckets.read(bucket)
        if events is None:
            continue
        kept = user_ok[events["user"]] & item_ok[events["item"]]
        np.minimum.at(first_user, events["user"][kept], events["order"][kept])
        np.minimum.at(first_item, events["item"][kept], events["order"][kept])
    user_ids, item_ids = np.full(len(user_ok), -1), np.full(len(item_ok), -1)
    kept_users, kept_items = np.flatnonzero(user_ok), np.flatnonzero(item_ok)
    user_ids[kept_users[np.argsort(first_user[kept_users], kind="stable")]] = np.arange(len(kept_users))
    item_ids[kept_items[np.argsort(first_item[kept_items], kind="stable")]] = np.arange(len(kept_items)) + first
    return user_ids, item_ids


def list_column(lengths: np.ndarray, starts: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A list column whose row r is values[starts[r] : starts[r] + lengths[r]], built without Python loops."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    index = starts[row_of] + (np.arange(int(offsets[-1])) - offsets[:-1][row_of])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[index], pa.int64()))


def leave_one_out(
    user_ids: np.ndarray, raw_users: np.ndarray, offsets: np.ndarray, items: np.ndarray
) -> dict[str, pa.Table]:
    """Split each user's time-ordered items (items[offsets[u]:offsets[u+1]])."""
    lengths, starts = np.diff(offsets), offsets[:-1]
    held_out = lengths >= 3
    train_lengths = np.where(held_out, lengths - 2, lengths)
    train = pa.table(
        [pa.array(user_ids), pa.array(raw_users, pa.string()), list_column(train_lengths, starts, items)],
        schema=TRAIN_SCHEMA,
    )
    users, starts, lengths = user_ids[held_out], starts[held_out], lengths[held_out]
    valid = pa.table(
        [pa.array(users), list_column(lengths - 2, starts, items), pa.array(items[starts + lengths - 2])],
        schema=EVAL_SCHEMA,
    )
    test = pa.table(
        [pa.array(users), list_column(lengths - 1, starts, items), pa.array(items[starts + lengths - 1])],
        schema=EVAL_SCHEMA,
    )
    return {"train": train, "valid": valid, "test": test}


HELD_OUT_SHARE = 0.1  # user split: this share of users for valid, and as many for test
INPUT_SHARE = 0.8  # user split: the first 80% of a held-out user's items are the input


def held_out_part(user_ids: np.ndarray) -> np.ndarray:
    """0 train, 1 valid, 2 test: from a hash of the dense user id, so any bucketing agrees."""
    position = ((user_ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)) / float(1 << 32)
    return np.where(position < HELD_OUT_SHARE, 1, np.where(position < 2 * HELD_OUT_SHARE, 2, 0))


def user_split(
    user_ids: np.ndarray, raw_users: np.ndarray, offsets: np.ndarray, items: np.ndarray
) -> dict[str, pa.Table]:
    """ComiRec's protocol: train users keep their whole sequence; a held-out user with at least
    2 items gives its first 80% (at least one item) as input and the rest as targets."""
    lengths, starts = np.diff(offsets), offsets[:-1]
    part = held_out_part(user_ids)
    in_train = part == 0
    train = pa.table(
        [
            pa.array(user_ids[in_train]),
            pa.array(raw_users[in_train], pa.string()),
            list_column(lengths[in_train], starts[in_train], items),
        ],
        schema=TRAIN_SCHEMA,
    )
    out = {"train": train}
    for name, code in (("valid", 1), ("test", 2)):
        rows = (part == code) & (lengths >= 2)
        n, s = lengths[rows], starts[rows]
        given = np.clip(np.floor(INPUT_SHARE * n).astype(np.int64), 1, n - 1)
        out[name] = pa.table(
            [pa.array(user_ids[rows]), list_column(given, s, items), list_column(n - given, s + given, items)],
            schema=USER_SPLIT_EVAL_SCHEMA,
        )
    return out


def train_row_group_size(requested: int, users: int) -> int:
    """Row groups are the data plan's unit: keep at least ~64 of them (small data sets get
    small groups) so the plan can balance streams, but never more users than requested."""
    return max(1, min(requested, max(32, math.ceil(users / 64))))


def write_splits(
    options: PrepareOptions,
    out: Path,
    buckets: Buckets,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    raw_users: np.ndarray,
    num_items: int,
) -> tuple[dict[str, list[dict]], np.ndarray, int]:
    """Pass 2: sort each bucket by (user, time, file order), split, write. Returns files, popularity, events."""
    group_size = train_row_group_size(options.row_group_size, len(raw_users))
    writers = {
        split: SplitWriter(out, split, split_schema(options.split, split), group_size, options.rows_per_shard)
        for split in ("train", "valid", "test")
    }
    split_users = user_split if options.split == "user" else leave_one_out
    popularity = np.zeros(num_items + 1, np.int64)
    events_kept = 0
    for bucket in range(buckets.count):
        events = buckets.read(bucket)
        if events is None:
            continue
        users, items = user_ids[events["user"]], item_ids[events["item"]]
        kept = (users >= 0) & (items >= 0)
        users, items, times, order = users[kept], items[kept], events["time"][kept], events["order"][kept]
        sort = np.lexsort((order, times, users))
        users, items = users[sort], items[sort]
        starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
        offsets = np.append(starts, len(users))
        bucket_users = users[starts]
        splits = split_users(bucket_users, raw_users[bucket_users], offsets, items)
        for split, table in splits.items():
            writers[split].write(table)
        train_items = splits["train"].column("items").combine_chunks().flatten().to_numpy()
        popularity += np.bincount(train_items, minlength=num_items + 1)
        events_kept += len(items)
    return {split: writer.close() for split, writer in writers.items()}, popularity, events_kept


def prepare(options: PrepareOptions) -> dict:
    """Run the whole pipeline and return the manifest it wrote.

    Nothing is written unless the input exists; an existing non-empty `out` is refused
    unless `overwrite`. The dataset is written beside `out` and swapped in complete, so a
    failed or killed run leaves the old dataset (or nothing) as it was."""
    if options.format not in FORMATS:
        raise DataError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    if options.split not in SPLITS:
        raise DataError(f"unknown split {options.split!r}; choose one of {', '.join(SPLITS)}")
    if is_remote(options.input) or is_remote(options.out):
        return _prepare_remote(options)
    options = replace(options, input=local_path(options.input), out=local_path(options.out))
    if not options.input.exists():
        raise DataError(f"input {options.input} does not exist")
    try:
        held = claim(options.out, "dimerec-prepare")
    except OutputError as exc:
        raise DataError(str(exc)) from None
    try:
        try:
            check_target(options.out, options.overwrite, "a prepared dataset", "manifest.json")
        except OutputError as exc:
            raise DataError(str(exc)) from None
        staging = begin(options.out)
        try:
            manifest = _prepare_into(options, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish(staging, options.out)
    finally:
        held.release()
    return manifest


def _prepare_remote(options: PrepareOptions) -> dict:
    """Input or output on an object store: the input copied here, the dataset prepared here and
    uploaded with its manifest last (a reader trusts a dataset only once its manifest is there)."""
    with tempfile.TemporaryDirectory(prefix="dimerec-prepare-") as scratch:
        local = replace(options)
        try:
            if is_remote(options.input):
                local.input = download(str(options.input), Path(scratch) / "input")
            if is_remote(options.out):
                if exists(f"{str(options.out).rstrip('/')}/manifest.json") and not options.overwrite:
                    raise DataError(f"{options.out} holds a prepared dataset: never overwritten (pass --overwrite)")
                local.out = Path(scratch) / "prepared"
            manifest = prepare(local)
            if is_remote(options.out):
                upload_dir(local.out, str(options.out), "manifest.json")
                log.info("uploaded to %s", options.out)
        except StorageError as exc:
            raise DataError(str(exc)) from None
    return manifest


def _prepare_into(options: PrepareOptions, out: Path) -> dict:
    started = time.time()
    bad = BadLines(skip=options.skip_bad_lines)
    buckets = Buckets(out / ".buckets", bucket_count(options))
    try:
        users, items, events_read = spill_events(options, buckets, bad)
        if bad.count:
            log.warning("skipped %d bad lines; the first: %s", bad.count, bad.first)
        if options.kcore > 1:
            user_ok, item_ok = kcore_filter(buckets, len(users), len(items), options.kcore)
            if not user_ok.any() or not item_ok.any():
                raise DataError(f"{options.input}: the {options.kcore}-core filter removed every event")
        else:
            user_ok, item_ok = np.ones(len(users), bool), np.ones(len(items), bool)
        user_ids, item_ids = dense_ids(buckets, user_ok, item_ok, first=1)
        num_users, num_items = int(user_ok.sum()), int(item_ok.sum())
        raw_users = np.empty(num_users, dtype=object)
        raw_users[user_ids[user_ok]] = users.raw()[user_ok]
        files, popularity, events = write_splits(options, out, buckets, user_ids, item_ids, raw_users, num_items)
    finally:
        buckets.remove()

    raw_items = np.empty(num_items, dtype=object)
    raw_items[item_ids[item_ok] - 1] = items.raw()[item_ok]
    items_table = pa.table(
        [pa.array(np.arange(1, num_items + 1)), pa.array(raw_items, pa.string()), pa.array(popularity[1:])],
        schema=ITEMS_SCHEMA,
    )
    items_entry = write_parquet(items_table, out, "items.parquet", options.row_group_size)
    count = lambda split: sum(entry["rows"] for entry in files[split])  # noqa: E731
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_by": "dimerec-prepare",
        "source": {
            "format": options.format,
            "delimiter": options.delimiter,
            "input": str(options.input),
            "input_sha256": file_sha256(options.input) if options.input.is_file() else None,
        },
        "options": {
            "kcore": options.kcore,
            "split": options.split,
            "order": "time, then file order",
            "skip_bad_lines": options.skip_bad_lines,
            "row_group_size": train_row_group_size(options.row_group_size, num_users),
        },
        "counts": {
            "events_read": events_read,
            "events": events,
            "users": num_users,
            "items": num_items,
            "bad_lines_skipped": bad.count,
            "train_interactions": int(popularity.sum()),
            "valid_users": count("valid"),
            "test_users": count("test"),
            "train_samples": sum(g["samples"] for entry in files["train"] for g in entry["row_groups"]),
        },
        "items": items_entry,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    elapsed = time.time() - started
    log.info(
        "prepared %s: %d users, %d items, %d events in %.1fs (%.0f events/s)",
        options.out,
        num_users,
        num_items,
        events,
        elapsed,
        events_read / max(elapsed, 1e-9),
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS, help="the raw log's layout (docs/DATA.md)")
    parser.add_argument(
        "--input", required=True, help="a file, or for events a directory of part files (a path or s3://, gs://, ...)"
    )
    parser.add_argument("--out", required=True, help="a directory (a path or s3://, gs://, ...)")
    parser.add_argument(
        "--kcore", type=integer(0), default=0, help="keep users and items with at least k events (0: off)"
    )
    parser.add_argument("--user-col", default=None, help="events: user (default); recbole: user_id")
    parser.add_argument("--item-col", default=None, help="events: item (default); recbole: item_id")
    parser.add_argument(
        "--time-col",
        default=None,
        help="events: time (default); recbole: timestamp; '' when the events have no time column (file order)",
    )
    parser.add_argument(
        "--delimiter", default=None, help="events CSV: the field separator (default ',' for .csv, tab for .tsv; 'tab')"
    )
    parser.add_argument("--rows-per-shard", type=integer(1), default=1_000_000, help="users per output file")
    parser.add_argument("--row-group-size", type=integer(1), default=2048, help="users per row group (the plan's unit)")
    parser.add_argument("--buckets", type=integer(0, 4096), default=0, help="spill buckets (0: ~2M events each)")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="count and skip unparsable lines (and events with a missing time) instead of failing",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty --out (swapped in only when complete)"
    )
    parser.add_argument(
        "--split",
        default="leave-one-out",
        choices=SPLITS,
        help="leave-one-out (last item test, second to last valid) or user (ComiRec: 10%%/10%% of "
        "users held out, their first 80%% in, the rest as targets)",
    )
    add_log_level(parser)
    args = parser.parse_args(argv)
    apply_log_level(args)
    setup_command_logging()
    user_col, item_col, time_col = DEFAULT_COLUMNS.get(args.format, DEFAULT_COLUMNS["events"])
    delimiter = "\t" if args.delimiter in ("tab", "\\t") else args.delimiter
    if delimiter is not None and len(delimiter) != 1:
        parser.error(f"--delimiter {args.delimiter!r}: one character, or 'tab'")
    try:
        prepare(
            PrepareOptions(
                format=args.format,
                input=args.input,
                out=args.out,
                kcore=args.kcore,
                user_col=args.user_col or user_col,
                item_col=args.item_col or item_col,
                time_col=(time_col if args.time_col is None else args.time_col) or None,
                delimiter=delimiter,
                rows_per_shard=args.rows_per_shard,
                row_group_size=args.row_group_size,
                buckets=args.buckets,
                skip_bad_lines=args.skip_bad_lines,
                split=args.split,
                overwrite=args.overwrite,
            )
        )
    except DataError as exc:
        print(f"dimerec-prepare: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full disk, a path that is a file: where, and what the OS said
        print(f"dimerec-prepare: error: {os_error_line(exc, writing=args.out)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
