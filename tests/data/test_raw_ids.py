"""Raw ids are strings end to end: what the file says is the id, nothing typed, trimmed or merged.

Each case here was found by a probe with inputs nobody on the team wrote; each failed
(merged users, rewritten ids, a refused file, a NaN time as a test target) before ids were
read as text."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split


def prepared(tmp_path, name, text, fmt="events", **options):
    source = tmp_path / name
    source.write_text(text, encoding="utf-8")
    out = tmp_path / f"out-{name}"
    prepare(PrepareOptions(format=fmt, input=source, out=out, **options))
    return Manifest.load(out)


def raw_users(manifest):
    return sorted(row["raw_user"] for row in read_split(manifest, "train").to_pylist())


def raw_items(manifest):
    return read_items(manifest).column("raw_id").to_pylist()


def test_csv_ids_are_text_zero_padded_ids_stay_apart_and_unchanged(tmp_path):
    manifest = prepared(tmp_path, "e.csv", "user,item,time\n007,0042,1\n7,42,2\n007,42,3\n")
    assert raw_users(manifest) == ["007", "7"]
    assert raw_items(manifest) == ["0042", "42"]


def test_csv_ids_past_int64_stay_distinct(tmp_path):
    big = [str(2**64 + i) for i in range(3)]
    rows = "".join(f"u,{item},{t}\n" for t, item in enumerate(big))
    manifest = prepared(tmp_path, "e.csv", "user,item,time\n" + rows)
    assert raw_items(manifest) == big


def test_csv_ids_that_turn_non_numeric_after_the_first_block_are_read(tmp_path):
    # Arrow reads CSV in blocks of about 1 MB and used to type columns from the first one.
    numeric = "".join(f"{i % 500},{i % 997},{i}\n" for i in range(120_000))
    manifest = prepared(tmp_path, "e.csv", "user,item,time\n" + numeric + "late-user,late-item,999999\n")
    assert "late-user" in raw_users(manifest) and "late-item" in raw_items(manifest)


@pytest.mark.parametrize(
    "fmt, name, text",
    [
        ("sequences", "s.txt", "\ufeffu0 a b c\nu0 d\n"),
        ("pairs", "p.txt", "\ufeffu0 a\nu0 b\nu0 c\n"),
        ("events", "e.csv", "\ufeffuser,item,time\nu0,a,1\nu0,b,2\nu0,c,3\n"),
    ],
)
def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path, fmt, name, text):
    assert raw_users(prepared(tmp_path, name, text, fmt=fmt)) == ["u0"]


@pytest.mark.parametrize("time", ["nan", "", "inf"])
def test_missing_or_non_finite_times_are_refused_with_file_and_line(tmp_path, time):
    with pytest.raises(DataError, match=r"e.csv:3: missing or non-finite 'time'"):
        prepared(tmp_path, "e.csv", f"user,item,time\nu0,a,1\nu0,b,{time}\nu0,c,3\n")


def test_missing_times_can_be_skipped_and_are_counted(tmp_path):
    manifest = prepared(tmp_path, "e.csv", "user,item,time\nu0,a,1\nu0,b,nan\nu0,c,3\nu0,d,4\n", skip_bad_lines=True)
    assert manifest.data["counts"]["bad_lines_skipped"] == 1
    assert "b" not in raw_items(manifest), "a NaN time never becomes the last event (a test target)"


def test_missing_times_in_parquet_name_the_row(tmp_path):
    source = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user": ["u0"] * 3, "item": ["a", "b", "c"], "time": [1.0, None, 3.0]}), source)
    with pytest.raises(DataError, match=r"e.parquet:2: missing or non-finite 'time'"):
        prepare(PrepareOptions(format="events", input=source, out=tmp_path / "out"))


@pytest.mark.parametrize(
    "fmt, name, text, line",
    [
        ("events", "e.csv", "user,item,time\nu0,a,1\nu0,26\x00,2\n", 3),
        ("sequences", "s.txt", "u0 a b\nu1 26\x00 c\n", 2),
        ("pairs", "p.txt", "u0 a\nu0 b\x07\n", 2),
    ],
)
def test_control_characters_in_ids_are_refused_with_file_and_line(tmp_path, fmt, name, text, line):
    with pytest.raises(DataError, match=rf"{name}:{line}: a control character"):
        prepared(tmp_path, name, text, fmt=fmt)


@pytest.mark.parametrize("column, kind", [("item", pa.list_(pa.int64())), ("user", pa.float64())])
def test_parquet_id_columns_of_other_types_are_one_line_errors(tmp_path, column, kind):
    values = {"user": ["u0", "u0"], "item": ["a", "b"], "time": [1, 2]}
    values[column] = pa.array([[1], [2]] if pa.types.is_list(kind) else [1.0, 2.0], kind)
    source = tmp_path / "e.parquet"
    pq.write_table(pa.table(values), source)
    with pytest.raises(DataError, match=rf"e.parquet: id column '{column}' has type") as info:
        prepare(PrepareOptions(format="events", input=source, out=tmp_path / "out"))
    assert "\n" not in str(info.value)


def test_parquet_integer_ids_past_int64_keep_their_value(tmp_path):
    source = tmp_path / "e.parquet"
    big = [2**63 + 5, 2**64 - 1, 2**63 + 5]
    pq.write_table(
        pa.table({"user": pa.array([0, 0, 0], pa.uint64()), "item": pa.array(big, pa.uint64()), "time": [1, 2, 3]}),
        source,
    )
    prepare(PrepareOptions(format="events", input=source, out=tmp_path / "out"))
    assert raw_items(Manifest.load(tmp_path / "out")) == [str(2**63 + 5), str(2**64 - 1)]
