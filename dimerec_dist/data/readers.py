"""Raw interaction logs -> a stream of (user, item, time) Arrow tables of bounded size.

Nothing here holds a whole log: text files are parsed a chunk of lines at a time, Parquet
by record batch, CSV by streaming block. A line that does not parse is an error naming
the file and line, or, when asked, skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dimerec_dist.data.schema import DataError

FORMATS = ("movielens", "pairs", "sequences", "events")
EVENT_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("time", pa.float64())])
CHUNK_LINES = 500_000
CHUNK_ROWS = 1 << 20


@dataclass
class BadLines:
    """Raises on the first bad line, or (skip=True) counts them and keeps the first message."""

    skip: bool = False
    count: int = 0
    first: str | None = None

    def __call__(self, path: Path, number: int, line: str, why: str) -> None:
        message = f"{path}:{number}: {why}: {line[:80]!r}"
        if not self.skip:
            raise DataError(message)
        self.count += 1
        self.first = self.first or message


@dataclass
class ReadOptions:
    format: str
    input: Path
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = "time"
    bad: BadLines = field(default_factory=BadLines)


def _events(users: list[str], items: list[str], times: list[float] | None) -> pa.Table:
    stamps = np.zeros(len(users)) if times is None else np.asarray(times, dtype=np.float64)
    return pa.table([pa.array(users, pa.string()), pa.array(items, pa.string()), pa.array(stamps)],
                    schema=EVENT_SCHEMA)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    number = 0
    with open(path, encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if line:
                    yield number, line
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text near line {number + 1} ({exc.reason})") from None


def _parse_line(fmt: str, fields: list[str]) -> tuple[list[str], list[str], list[float] | None] | str:
    """(users, items, times) of one line, or why it does not parse."""
    if fmt == "movielens":
        if len(fields) != 4:
            return f"expected 4 fields (user item rating timestamp), found {len(fields)}"
        try:
            return [fields[0]], [fields[1]], [float(int(fields[3]))]
        except ValueError:
            return f"timestamp {fields[3]!r} is not an integer"
    if fmt == "pairs":
        if len(fields) != 2:
            return f"expected 2 fields (user item), found {len(fields)}"
        return [fields[0]], [fields[1]], None
    if len(fields) < 2:
        return "expected a user followed by at least one item"
    return [fields[0]] * (len(fields) - 1), fields[1:], None


def read_text(options: ReadOptions) -> Iterator[pa.Table]:
    """movielens (u.data / ratings.dat), pairs and sequences text files, in chunks of lines."""
    users, items, times = [], [], []
    timed = options.format == "movielens"
    for number, line in _numbered_lines(options.input):
        fields = line.split("::") if "::" in line else line.split()
        parsed = _parse_line(options.format, fields)
        if isinstance(parsed, str):
            options.bad(options.input, number, line, parsed)
            continue
        users += parsed[0]
        items += parsed[1]
        if timed:
            times += parsed[2]
        if len(users) >= CHUNK_LINES:
            yield _events(users, items, times if timed else None)
            users, items, times = [], [], []
    if users:
        yield _events(users, items, times if timed else None)


def _event_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet")) + sorted(path.rglob("*.csv"))
    if not files:
        raise DataError(f"input directory {path} holds no .parquet or .csv files")
    return files


def _check_batch(batch: pa.Table, file: Path, first_row: int, options: ReadOptions) -> pa.Table:
    for column in (options.user_col, options.item_col):
        if batch.column(column).null_count:
            row = first_row + int(np.argmax(batch.column(column).is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{file}: null {column!r} at row {row}")
    if options.time_col:
        stamps = batch.column(options.time_col)
        kind = stamps.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind)):
            raise DataError(f"{file}: time column {options.time_col!r} has type {kind}, expected numbers or timestamps")
        if stamps.null_count:
            row = first_row + int(np.argmax(stamps.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{file}: null {options.time_col!r} at row {row}")
        if pa.types.is_timestamp(kind):
            stamps = stamps.cast(pa.int64())
        times = stamps.cast(pa.float64())
    else:
        times = pa.array(np.zeros(batch.num_rows))
    return pa.table([batch.column(options.user_col).cast(pa.string()), batch.column(options.item_col).cast(pa.string()),
                     times], schema=EVENT_SCHEMA)


def read_event_files(options: ReadOptions) -> Iterator[pa.Table]:
    """CSV or Parquet files (or a directory of them), streamed batch by batch."""
    wanted = [c for c in (options.user_col, options.item_col, options.time_col) if c]
    for file in _event_files(options.input):
        try:
            if file.suffix == ".parquet":
                reader = pq.ParquetFile(file)
                names = reader.schema_arrow.names
                batches = reader.iter_batches(batch_size=CHUNK_ROWS, columns=[c for c in wanted if c in names])
            else:
                reader = pacsv.open_csv(file)
                names = reader.schema.names
                batches = reader
            missing = [c for c in wanted if c not in names]
            if missing:
                raise DataError(f"{file}: missing column(s) {missing}; has {names} "
                                f"(choose them with --user-col/--item-col/--time-col)")
            first_row = 0
            for batch in batches:
                table = pa.Table.from_batches([batch])
                yield _check_batch(table, file, first_row, options)
                first_row += table.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read ({str(exc).splitlines()[0]})") from None


def read_events(options: ReadOptions) -> Iterator[pa.Table]:
    if options.format not in FORMATS:
        raise DataError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    if options.format == "events":
        return read_event_files(options)
    return read_text(options)
