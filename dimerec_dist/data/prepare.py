"""dimerec-prepare: raw interaction logs -> the prepared dataset the trainer reads.

Pipeline: read events (user, item, time, file order) -> optional k-core filter -> dense
ids (items 1..I in order of first appearance, 0 kept for padding) -> each user's items in
time order (ties keep file order) -> leave-one-out split (last item = test, second to
last = validation) -> Parquet shards + items.parquet + manifest.json.

Users with fewer than 3 items have no held-out item: all their items go to training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dimerec_dist.data.schema import (EVAL_SCHEMA, ITEMS_SCHEMA, SCHEMA_VERSION, TRAIN_SCHEMA, DataError,
                                      sha256_of, write_parquet)

log = logging.getLogger("dimerec.prepare")
FORMATS = ("movielens", "pairs", "sequences", "events")


@dataclass
class PrepareOptions:
    format: str
    input: Path
    out: Path
    kcore: int = 0
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = "time"
    rows_per_shard: int = 1_000_000
    row_group_size: int = 8192
    skip_bad_lines: bool = False


# --------------------------------------------------------------------------- readers


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if line:
                    yield number, line
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text near byte {exc.start}") from None


class _BadLines:
    """Either raises on the first bad line (default) or counts and skips them."""

    def __init__(self, path: Path, skip: bool):
        self.path, self.skip, self.count, self.first = path, skip, 0, None

    def __call__(self, number: int, line: str, why: str) -> None:
        message = f"{self.path}:{number}: {why}: {line[:80]!r}"
        if not self.skip:
            raise DataError(message)
        self.count += 1
        self.first = self.first or message


def read_movielens(path: Path, bad: _BadLines) -> pa.Table:
    """u.data (tab-separated) or ratings.dat (`::`): user item rating timestamp."""
    users, items, times = [], [], []
    for number, line in _lines(path):
        fields = line.split("::") if "::" in line else line.split()
        if len(fields) != 4:
            bad(number, line, f"expected 4 fields (user item rating timestamp), found {len(fields)}")
            continue
        try:
            stamp = int(fields[3])
        except ValueError:
            bad(number, line, f"timestamp {fields[3]!r} is not an integer")
            continue
        users.append(fields[0]), items.append(fields[1]), times.append(stamp)
    return _events(users, items, times)


def read_pairs(path: Path, bad: _BadLines) -> pa.Table:
    """`user item` per line; each user's lines are in time order."""
    users, items = [], []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 2:
            bad(number, line, f"expected 2 fields (user item), found {len(fields)}")
            continue
        users.append(fields[0]), items.append(fields[1])
    return _events(users, items, None)


def read_sequences(path: Path, bad: _BadLines) -> pa.Table:
    """`user i1 i2 ...` per line, items in time order."""
    users, items = [], []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) < 2:
            bad(number, line, "expected a user followed by at least one item")
            continue
        users.extend([fields[0]] * (len(fields) - 1)), items.extend(fields[1:])
    return _events(users, items, None)


def read_events(path: Path, user_col: str, item_col: str, time_col: str | None) -> pa.Table:
    """CSV or Parquet (a file, or a directory of part files) with named user/item/time columns."""
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    files = sorted(path.rglob("*.parquet")) + sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"input directory {path} holds no .parquet or .csv files")
    wanted = [c for c in (user_col, item_col, time_col) if c]
    tables = []
    for file in files:
        try:
            table = pq.read_table(file) if file.suffix == ".parquet" else pacsv.read_csv(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read ({str(exc).splitlines()[0]})") from None
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; has {table.column_names} "
                            f"(choose them with --user-col/--item-col/--time-col)")
        for column in (user_col, item_col):
            if table.column(column).null_count:
                row = int(np.argmax(table.column(column).is_null().to_numpy(zero_copy_only=False)))
                raise DataError(f"{file}: null {column!r} at row {row}")
        times = None
        if time_col:
            stamps = table.column(time_col)
            if not (pa.types.is_integer(stamps.type) or pa.types.is_timestamp(stamps.type)
                    or pa.types.is_floating(stamps.type)):
                raise DataError(f"{file}: time column {time_col!r} has type {stamps.type}, expected numbers or timestamps")
            if stamps.null_count:
                row = int(np.argmax(stamps.is_null().to_numpy(zero_copy_only=False)))
                raise DataError(f"{file}: null {time_col!r} at row {row}")
            times = stamps.cast(pa.int64()) if not pa.types.is_floating(stamps.type) else stamps
        tables.append(pa.table({"user": table.column(user_col).cast(pa.string()),
                                "item": table.column(item_col).cast(pa.string()),
                                "time": times if times is not None else pa.array(np.zeros(table.num_rows, np.int64))}))
    return pa.concat_tables(tables, promote_options="permissive")


def _events(users: list[str], items: list[str], times: list[int] | None) -> pa.Table:
    stamps = np.zeros(len(users), dtype=np.int64) if times is None else np.asarray(times, dtype=np.int64)
    return pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()), "time": stamps})


# --------------------------------------------------------------------------- transforms


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Events kept by the iterative k-core filter: every kept user and item has >= k events."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        new_keep = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def first_appearance_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dense codes 0.. in order of first appearance, and the raw value of each code."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


@dataclass
class Sequences:
    """Every user's items in time order, flattened: items[offsets[u]:offsets[u+1]]."""

    offsets: np.ndarray
    items: np.ndarray
    raw_users: pa.Array
    raw_items: pa.Array

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_sequences(events: pa.Table, kcore: int) -> Sequences:
    if events.num_rows == 0:
        raise DataError("the input holds no events")
    user_codes, _ = first_appearance_codes(events.column("user"))
    item_codes, _ = first_appearance_codes(events.column("item"))
    keep = kcore_mask(user_codes, item_codes, kcore) if kcore > 1 else np.ones(events.num_rows, dtype=bool)
    if not keep.any():
        raise DataError(f"the {kcore}-core filter removed every event")
    events = events.filter(pa.array(keep))
    # Codes again after filtering: dense ids with no holes, items 1..I (0 is padding).
    user_codes, raw_users = first_appearance_codes(events.column("user"))
    item_codes, raw_items = first_appearance_codes(events.column("item"))
    times = events.column("time").to_numpy()
    order = np.lexsort((np.arange(len(user_codes)), times, user_codes))  # user, then time, then file order
    counts = np.bincount(user_codes, minlength=len(raw_users))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return Sequences(offsets=offsets, items=item_codes[order] + 1, raw_users=raw_users, raw_items=raw_items)


def _list_array(lengths: np.ndarray, starts: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A list column whose row r is values[starts[r] : starts[r] + lengths[r]], built without Python loops."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    index = starts[row_of] + (np.arange(int(lengths.sum())) - offsets[:-1][row_of])
    list_type = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
    return list_type.from_arrays(pa.array(offsets), pa.array(values[index], pa.int64()))


def leave_one_out(seqs: Sequences) -> dict[str, pa.Table]:
    lengths = seqs.lengths()
    starts = seqs.offsets[:-1]
    held_out = lengths >= 3
    train_lengths = np.where(held_out, lengths - 2, lengths)
    users = np.arange(len(lengths), dtype=np.int64)
    train = pa.table([pa.array(users), seqs.raw_users.cast(pa.string()), _list_array(train_lengths, starts, seqs.items)],
                     schema=TRAIN_SCHEMA)
    h_users, h_starts, h_lengths = users[held_out], starts[held_out], lengths[held_out]
    valid = pa.table([pa.array(h_users), _list_array(h_lengths - 2, h_starts, seqs.items),
                      pa.array(seqs.items[h_starts + h_lengths - 2])], schema=EVAL_SCHEMA)
    test = pa.table([pa.array(h_users), _list_array(h_lengths - 1, h_starts, seqs.items),
                     pa.array(seqs.items[h_starts + h_lengths - 1])], schema=EVAL_SCHEMA)
    return {"train": train, "valid": valid, "test": test}


def _shards(table: pa.Table, rows: int) -> Iterable[pa.Table]:
    for start in range(0, max(table.num_rows, 1), rows):
        yield table.slice(start, rows)


def prepare(options: PrepareOptions) -> dict:
    """Run the whole pipeline and return the manifest it wrote."""
    started = time.time()
    if options.format not in FORMATS:
        raise DataError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    bad = _BadLines(options.input, options.skip_bad_lines)
    if options.format == "movielens":
        events = read_movielens(options.input, bad)
    elif options.format == "pairs":
        events = read_pairs(options.input, bad)
    elif options.format == "sequences":
        events = read_sequences(options.input, bad)
    else:
        events = read_events(options.input, options.user_col, options.item_col, options.time_col)
    if bad.count:
        log.warning("skipped %d bad lines; the first: %s", bad.count, bad.first)
    log.info("read %d events from %s", events.num_rows, options.input)

    seqs = build_sequences(events, options.kcore)
    splits = leave_one_out(seqs)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {}
    for split, table in splits.items():
        files[split] = [write_parquet(shard, out, f"{split}/part-{index:05d}.parquet", options.row_group_size)
                        for index, shard in enumerate(_shards(table, options.rows_per_shard))]
    train_items = splits["train"].column("items").combine_chunks().flatten().to_numpy()
    popularity = np.bincount(train_items, minlength=len(seqs.raw_items) + 1)[1:]
    items = pa.table([pa.array(np.arange(1, len(seqs.raw_items) + 1)), seqs.raw_items.cast(pa.string()),
                      pa.array(popularity.astype(np.int64))], schema=ITEMS_SCHEMA)
    items_entry = write_parquet(items, out, "items.parquet", options.row_group_size)
    lengths = seqs.lengths()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_by": "dimerec-prepare",
        "source": {"format": options.format, "input": str(options.input),
                   "input_sha256": sha256_of(options.input) if options.input.is_file() else None},
        "options": {"kcore": options.kcore, "split": "leave-one-out", "order": "time, then file order",
                    "skip_bad_lines": options.skip_bad_lines},
        "counts": {"events_read": events.num_rows, "events": int(lengths.sum()), "users": len(lengths),
                   "items": len(seqs.raw_items), "bad_lines_skipped": bad.count,
                   "train_interactions": int(len(train_items)), "valid_users": splits["valid"].num_rows,
                   "test_users": splits["test"].num_rows,
                   "train_samples": int(np.maximum(splits["train"].column("items").combine_chunks()
                                                   .value_lengths().to_numpy() - 1, 0).sum())},
        "items": items_entry,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %s: %d users, %d items, %d events in %.1fs", out, manifest["counts"]["users"],
             manifest["counts"]["items"], manifest["counts"]["events"], time.time() - started)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, type=Path, help="a file, or for events a directory of part files")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kcore", type=int, default=0, help="keep users and items with at least k events (0: off)")
    parser.add_argument("--user-col", default="user")
    parser.add_argument("--item-col", default="item")
    parser.add_argument("--time-col", default="time", help="'' when the events have no time column (file order)")
    parser.add_argument("--rows-per-shard", type=int, default=1_000_000)
    parser.add_argument("--row-group-size", type=int, default=8192)
    parser.add_argument("--skip-bad-lines", action="store_true", help="count and skip unparsable lines instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        prepare(PrepareOptions(format=args.format, input=args.input, out=args.out, kcore=args.kcore,
                               user_col=args.user_col, item_col=args.item_col, time_col=args.time_col or None,
                               rows_per_shard=args.rows_per_shard, row_group_size=args.row_group_size,
                               skip_bad_lines=args.skip_bad_lines))
    except DataError as exc:
        print(f"dimerec-prepare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
