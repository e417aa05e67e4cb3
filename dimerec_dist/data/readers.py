"""Raw interaction logs -> a stream of (user, item, time) Arrow tables of bounded size.

Nothing here holds a whole log: text files are parsed a chunk of lines at a time, Parquet
by record batch, CSV by streaming block. A line that does not parse is an error naming
the file and line, or, when asked, skipped and counted.

Ids are strings end to end: `007` and `7` are two users, an id past 2^63 stays itself. CSV
id columns are read as strings (never typed by Arrow's inference), Parquet's integer or
string id columns are turned into their decimal text. A UTF-8 byte-order mark is not part
of the first id; an id holding a control character, and an event whose time is missing,
NaN or infinite, is a bad line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dimerec_dist.data.schema import DataError

FORMATS = ("movielens", "pairs", "sequences", "events", "recbole")
# RecBole's atomic files (.inter): a header of `name:type` fields, tab-separated. The types an
# interaction file's user, item and time columns may have, and every type RecBole defines.
RECBOLE_TYPES = {"token": pa.string(), "float": pa.float64()}
RECBOLE_KNOWN_TYPES = ("token", "token_seq", "float", "float_seq")
EVENT_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("time", pa.float64())])
CHUNK_LINES = 500_000
CHUNK_ROWS = 1 << 20
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"  # never part of an id: a NUL or a stray newline means a broken file


@dataclass
class BadLines:
    """Raises on the first bad line, or (skip=True) counts them and keeps the first message."""

    skip: bool = False
    count: int = 0
    first: str | None = None

    def __call__(self, path: Path, number: int, line: str, why: str) -> None:
        self.many(path, [number], why, line)

    def many(self, path: Path, numbers: list[int], why: str, sample: str) -> None:
        """`len(numbers)` bad lines with one reason; `sample` is the first one's text."""
        message = f"{path}:{numbers[0]}: {why}: {sample[:80]!r}"
        if not self.skip:
            raise DataError(message)
        self.count += len(numbers)
        self.first = self.first or message


@dataclass
class ReadOptions:
    format: str
    input: Path
    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = "time"
    bad: BadLines = field(default_factory=BadLines)
    delimiter: str | None = None  # events CSV: None is "," for .csv and a tab for .tsv


def _events(users: list[str], items: list[str], times: list[float] | None) -> pa.Table:
    stamps = np.zeros(len(users)) if times is None else np.asarray(times, dtype=np.float64)
    return pa.table([pa.array(users, pa.string()), pa.array(items, pa.string()), pa.array(stamps)], schema=EVENT_SCHEMA)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    number = 0
    with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the first id
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
        if not fields[0] or not fields[1]:
            return "an empty user or item"
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


_CONTROL_IN_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab separates fields


def read_text(options: ReadOptions) -> Iterator[pa.Table]:
    """movielens (u.data / ratings.dat), pairs and sequences text files, in chunks of lines."""
    users, items, times = [], [], []
    timed = options.format == "movielens"
    for number, line in _numbered_lines(options.input):
        if _CONTROL_IN_LINE.search(line):
            options.bad(options.input, number, line, "a control character in an id")
            continue
        # MovieLens' ratings.dat separates by '::' (u.data by tabs); in every other format '::' is part of an id.
        fields = line.split("::") if options.format == "movielens" and "::" in line else line.split()
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
    files = sorted(path.rglob("*.parquet")) + sorted(path.rglob("*.csv")) + sorted(path.rglob("*.tsv"))
    files += sorted(path.rglob("*.inter"))
    if not files:
        raise DataError(f"input directory {path} holds no .parquet, .csv, .tsv or .inter files")
    return files


def recbole_header(file: Path) -> tuple[list[str], dict[str, pa.DataType]]:
    """A RecBole atomic file's column names and the Arrow types of those we can read, from its
    `name:type` header; a field without a type, or with a type RecBole does not have, is an error."""
    with open(file, encoding="utf-8-sig") as handle:
        header = handle.readline().rstrip("\r\n")
    names, types = [], {}
    for number, field_text in enumerate(header.split("\t"), start=1):
        name, colon, kind = field_text.rpartition(":")
        if not colon or not name or kind not in RECBOLE_KNOWN_TYPES:
            raise DataError(
                f"{file}:1: header field {number} {field_text!r} is not name:type with a RecBole type "
                f"({', '.join(RECBOLE_KNOWN_TYPES)})"
            )
        names.append(name)
        if kind in RECBOLE_TYPES:
            types[name] = RECBOLE_TYPES[kind]
    return names, types


def _line_number(file: Path, text: str) -> int | str:
    """The number of the first line of `file` that is `text` (Arrow's streaming reader does not say)."""
    with open(file, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.rstrip("\r\n") == text:
                return number
    return "?"


class InvalidRows:
    """Arrow's handler of rows with the wrong number of fields: skipped and counted
    (--skip-bad-lines), or the first kept so the error can name its line."""

    def __init__(self, file: Path, bad: BadLines, delimiter: str):
        self.file, self.bad, self.delimiter, self.first = file, bad, delimiter, None

    def why(self, row) -> str:
        separated = "tab" if self.delimiter == "\t" else repr(self.delimiter)
        return f"expected {row.expected_columns} fields ({separated}-separated), found {row.actual_columns}"

    def __call__(self, row) -> str:
        if not self.bad.skip:
            self.first = self.first or (self.why(row), row.text)
            return "error"
        number = _line_number(self.file, row.text) if self.bad.first is None else 0  # only the first is named
        self.bad.many(self.file, [number], self.why(row), row.text)
        return "skip"

    def error(self) -> DataError | None:
        if self.first is None:
            return None
        why, text = self.first
        return DataError(f"{self.file}:{_line_number(self.file, text)}: {why}: {text[:80]!r}")


def _id_column(batch: pa.Table, column: str, file: Path) -> pa.ChunkedArray:
    """An id column as strings: text as it is, integers as their decimal text. Anything else
    (floats, lists, ...) would give ids that are not what the file says: refused."""
    kind = batch.schema.field(column).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return batch.column(column).cast(pa.string())
    if pa.types.is_integer(kind) or pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type):
        return batch.column(column).cast(pa.string())
    raise DataError(f"{file}: id column {column!r} has type {kind}, expected integers or strings")


SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
NUMBER = r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|(?i:nan|inf|infinity))\s*$"  # NaN, inf: "non-finite"


def _time_column(batch: pa.Table, column: str | None, file: Path) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """Times as float64 (a null where missing) and, for text, which rows are not numbers.

    Timestamps of any unit become seconds, so shards written in ms and in ns order together.
    Integers are taken as they are, epoch nanoseconds included (past 2^53 they round to the
    nearest ~256 ns; ties keep file order). Text is parsed here, not by Arrow's CSV inference,
    which types a column by its first block and then fails on a fractional value further on."""
    if not column:
        return pa.chunked_array([np.zeros(batch.num_rows)]), None
    stamps = batch.column(column)
    kind = stamps.type
    if pa.types.is_timestamp(kind):
        seconds = pc.multiply(stamps.cast(pa.int64()).cast(pa.float64(), safe=False), SECONDS_PER_UNIT[kind.unit])
        return seconds, None
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return stamps.cast(pa.float64(), safe=False), None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        numeric = pc.match_substring_regex(stamps, NUMBER)
        not_number = pc.fill_null(pc.invert(numeric), False)  # a missing time is "missing", below
        return pc.if_else(numeric, stamps, None).cast(pa.float64()), not_number
    raise DataError(f"{file}: time column {column!r} has type {kind}, expected numbers or timestamps")


def _check_batch(batch: pa.Table, file: Path, first_line: int, options: ReadOptions) -> pa.Table:
    """(user, item, time) of one batch; rows with a missing id or time, a control character in
    an id, or a time that is not finite are bad lines (`first_line` is the batch's first row's
    line number: rows count from 1 in Parquet, after the header in CSV)."""
    users = _id_column(batch, options.user_col, file)
    items = _id_column(batch, options.item_col, file)
    times, not_number = _time_column(batch, options.time_col, file)
    reasons = [
        (f"missing {options.user_col!r}", users.is_null()),
        (f"missing {options.item_col!r}", items.is_null()),
        (f"a control character in {options.user_col!r}", pc.match_substring_regex(users, CONTROL_CHARACTERS)),
        (f"a control character in {options.item_col!r}", pc.match_substring_regex(items, CONTROL_CHARACTERS)),
    ]
    if not_number is not None:
        reasons.append((f"{options.time_col!r} is not a number", not_number))
    if options.time_col:
        reasons.append((f"missing or non-finite {options.time_col!r}", pc.invert(pc.is_finite(times))))
    keep = np.ones(batch.num_rows, dtype=bool)
    flagged = [
        (why, np.asarray(pc.fill_null(flags, True).to_numpy(zero_copy_only=False), dtype=bool))
        for why, flags in reasons
    ]
    # The reason of the batch's first bad line is reported first: an error names the first bad line of the file.
    flagged.sort(key=lambda reason: int(np.argmax(reason[1])) if reason[1].any() else batch.num_rows)
    for why, flags in flagged:
        bad = flags & keep
        if bad.any():
            rows = np.flatnonzero(bad)
            sample = ", ".join(f"{name}={batch.column(name)[int(rows[0])].as_py()!r}" for name in batch.column_names)
            options.bad.many(file, [first_line + int(r) for r in rows], why, sample)
            keep &= ~bad
    table = pa.table([users, items, times], schema=EVENT_SCHEMA)
    return table if keep.all() else table.filter(pa.array(keep))


# Byte-order marks of the encodings a spreadsheet export may have used instead of UTF-8.
OTHER_ENCODINGS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def _check_utf8(file: Path) -> None:
    """A text file in another encoding is named as such, not as a row with the wrong field count."""
    with open(file, "rb") as handle:
        head = handle.read(1 << 16)
    for mark, encoding in OTHER_ENCODINGS.items():
        if head.startswith(mark):
            raise DataError(f"{file}: is {encoding} text (byte-order mark {mark.hex(' ')}); save it as UTF-8")
    first_line = head.split(b"\n", 1)[0]
    if len(first_line) >= 8 and first_line.count(0) * 3 >= len(first_line):  # every other byte NUL: UTF-16's ASCII
        raise DataError(
            f"{file}: looks like UTF-16 text (no byte-order mark, NUL bytes in its header); save it as UTF-8"
        )


def _check_header(file: Path, names: list[str], wanted: list[str]) -> None:
    """Each column read is named once in the file: a header naming one twice is ambiguous."""
    for column in wanted:
        if names.count(column) > 1:
            raise DataError(f"{file}:1: the header names column {column!r} {names.count(column)} times")


def read_event_files(options: ReadOptions) -> Iterator[pa.Table]:
    """CSV or Parquet files (or a directory of them), streamed batch by batch."""
    wanted = [c for c in (options.user_col, options.item_col, options.time_col) if c]
    if len(set(wanted)) < len(wanted):
        raise DataError(
            f"--user-col {options.user_col!r}, --item-col {options.item_col!r} and --time-col "
            f"{options.time_col!r} must name different columns"
        )
    for file in _event_files(options.input):
        invalid = None
        try:
            if file.suffix == ".parquet":
                reader = pq.ParquetFile(file)
                names = reader.schema_arrow.names
                _check_header(file, names, wanted)
                batches = reader.iter_batches(batch_size=CHUNK_ROWS, columns=[c for c in wanted if c in names])
                first_line = 1  # Parquet: "line" is the row, counted from 1
            elif options.format == "recbole":
                _check_utf8(file)
                columns, types = recbole_header(file)
                _check_header(file, columns, wanted)
                types = {**types, **({options.time_col: pa.string()} if options.time_col in types else {})}
                invalid = InvalidRows(file, options.bad, "\t")
                reader = pacsv.open_csv(
                    file,
                    read_options=pacsv.ReadOptions(column_names=columns, skip_rows=1),
                    parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=invalid),
                    convert_options=pacsv.ConvertOptions(
                        column_types=types, strings_can_be_null=True, null_values=[""]
                    ),
                )
                names, batches, first_line = columns, reader, 2
            else:
                # Ids are text: never let Arrow's type inference read `007` as 7 or a 20-digit id as a float.
                # A byte-order mark is skipped by Arrow's CSV reader.
                # The time is text too, parsed in _time_column. An empty field is a missing value, never the id "".
                text = {column: pa.string() for column in wanted}
                delimiter = options.delimiter or ("\t" if file.suffix == ".tsv" else ",")
                _check_utf8(file)
                invalid = InvalidRows(file, options.bad, delimiter)
                reader = pacsv.open_csv(
                    file,
                    parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid),
                    convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=True, null_values=[""]),
                )
                names = reader.schema.names
                _check_header(file, names, wanted)  # Arrow keeps a header's repeated name as two columns
                batches = reader
                first_line = 2  # CSV: line 1 is the header
            missing = [c for c in wanted if c not in names]
            if missing:
                raise DataError(
                    f"{file}: missing column(s) {missing}; has {names} "
                    f"(choose them with --user-col/--item-col/--time-col)"
                )
            for batch in batches:
                table = pa.Table.from_batches([batch]).select(wanted)
                yield _check_batch(table, file, first_line, options)
                first_line += table.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            named = invalid.error() if invalid is not None else None  # a row of the wrong width: its line
            raise named or DataError(f"{file}: cannot read ({str(exc).splitlines()[0]})") from None


def read_events(options: ReadOptions) -> Iterator[pa.Table]:
    if options.format not in FORMATS:
        raise DataError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    if options.format in ("events", "recbole"):
        return read_event_files(options)
    return read_text(options)
