"""Inputs a platform team's logs really have: timestamps in any unit, ids with '::' in them,
empty fields, text that turns fractional late, other encodings, headers naming a column
twice. Each was answered wrongly or refused before (issue #50); each is now read as meant or
named as what it is."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dimerec_dist.data.prepare import PrepareOptions, main, prepare
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split
from tests.data.test_raw_ids import prepared, raw_items, raw_users

EPOCH_S = 1_700_000_000


def in_time_order(manifest, raw_user):
    """A user's items as raw ids in the order the dataset keeps them (leave-one-out: the training
    items, then the validation and test targets)."""
    raw = dict(zip(read_items(manifest).column("item_id").to_pylist(), raw_items(manifest)))
    row = next(row for row in read_split(manifest, "train").to_pylist() if row["raw_user"] == raw_user)
    targets = [
        held_out["target"]
        for split in ("valid", "test")
        for held_out in read_split(manifest, split).to_pylist()
        if held_out["user"] == row["user"]
    ]
    return [raw[item] for item in row["items"] + targets]


def test_parquet_shards_in_different_time_units_are_ordered_by_the_time_they_mean(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    # ms in one file, us in the other: by raw value every us event would come after every ms one.
    pq.write_table(
        pa.table(
            {
                "user": ["u", "u"],
                "item": ["at-1s", "at-3s"],
                "time": pa.array([1000 * (EPOCH_S + t) for t in (1, 3)], pa.timestamp("ms")),
            }
        ),
        events / "a.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user": ["u", "u"],
                "item": ["at-2s", "at-4s"],
                "time": pa.array([10**6 * (EPOCH_S + t) for t in (2, 4)], pa.timestamp("us")),
            }
        ),
        events / "b.parquet",
    )
    manifest = Manifest.load(_prepare(events, tmp_path / "out"))
    assert in_time_order(manifest, "u") == ["at-1s", "at-2s", "at-3s", "at-4s"]


def _prepare(source, out, **options):
    prepare(PrepareOptions(format="events", input=source, out=out, **options))
    return out


@pytest.mark.parametrize(
    "column",
    [
        pa.array([10**9 * (EPOCH_S + t) for t in (3, 1, 2)], pa.timestamp("ns")),  # pandas' default
        pa.array([10**9 * (EPOCH_S + t) for t in (3, 1, 2)], pa.int64()),  # epoch nanoseconds as integers
    ],
    ids=["timestamp-ns", "int64-epoch-ns"],
)
def test_nanosecond_timestamps_are_read(tmp_path, column):
    pq.write_table(
        pa.table({"user": ["u"] * 3, "item": ["third", "first", "second"], "time": column}), tmp_path / "e.parquet"
    )
    manifest = Manifest.load(_prepare(tmp_path / "e.parquet", tmp_path / "out"))
    assert in_time_order(manifest, "u") == ["first", "second", "third"]


def test_fractional_csv_seconds_are_read_even_when_they_start_after_the_first_block(tmp_path):
    whole = "".join(f"u{i % 50},i{i % 97},{i}\n" for i in range(200_000))  # Arrow types a column by its first ~1 MB
    manifest = prepared(tmp_path, "e.csv", "user,item,time\n" + whole + "late,x,0.5\nlate,y,0.25\n")
    assert manifest.data["counts"]["events"] == 200_002
    assert in_time_order(manifest, "late") == ["y", "x"]


def test_a_non_numeric_time_is_a_bad_line_named_or_skipped_and_counted(tmp_path):
    text = "user,item,time\nu,a,1\nu,b,yesterday\nu,c,3\nu,d,4\n"
    with pytest.raises(DataError, match=r"e\.csv:3: 'time' is not a number: .*yesterday"):
        prepared(tmp_path, "e.csv", text)
    manifest = prepared(tmp_path, "f.csv", text, skip_bad_lines=True)
    assert manifest.data["counts"]["bad_lines_skipped"] == 1 and manifest.data["counts"]["events"] == 3


@pytest.mark.parametrize(
    "fmt, text, user, items",
    [
        ("pairs", "ns::user a::1\nns::user b::2\n", "ns::user", ["a::1", "b::2"]),
        ("sequences", "ns::user a::1 b::2 c::3\n", "ns::user", ["a::1", "b::2", "c::3"]),
    ],
)
def test_a_double_colon_is_part_of_an_id_outside_movielens(tmp_path, fmt, text, user, items):
    manifest = prepared(tmp_path, "in.txt", text, fmt=fmt)
    assert raw_users(manifest) == [user] and sorted(raw_items(manifest)) == items


@pytest.mark.parametrize(
    "text, line, what", [("user,item,time\nu,,1\nu,b,2\n", 2, "'item'"), ("user,item,time\nu,a,1\n,b,2\n", 3, "'user'")]
)
def test_an_empty_csv_field_is_a_missing_id_not_the_id_empty(tmp_path, text, line, what):
    with pytest.raises(DataError, match=rf"e\.csv:{line}: missing {what}"):
        prepared(tmp_path, "e.csv", text)
    manifest = prepared(tmp_path, "f.csv", text, skip_bad_lines=True)
    assert "" not in raw_users(manifest) + raw_items(manifest) and manifest.data["counts"]["bad_lines_skipped"] == 1


def test_an_empty_movielens_field_is_a_bad_line(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.dat:2: an empty user or item"):
        prepared(tmp_path, "ratings.dat", "1::10::5::100\n1::::5::101\n", fmt="movielens")


def test_a_utf16_file_is_named_as_utf16_not_as_a_field_count(tmp_path):
    source = tmp_path / "e.csv"
    source.write_bytes("user,item,time\nu,a,1\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"e\.csv: is UTF-16 text \(byte-order mark ff fe\); save it as UTF-8"):
        prepare(PrepareOptions(format="events", input=source, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"e\.csv:1: the header names column 'user' 2 times"):
        prepared(tmp_path, "e.csv", "user,item,time,user\nu,a,1,v\n")


def test_one_column_for_two_roles_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "e.csv").write_text("user,item,time\nu,a,1\n")
    code = main(
        ["--format", "events", "--input", str(tmp_path / "e.csv"), "--out", str(tmp_path / "out"), "--user-col", "item"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--user-col 'item', --item-col 'item'" in err, err
    assert not (tmp_path / "out").exists()


def test_a_full_disk_during_prepare_names_the_output_and_leaves_nothing(tmp_path, small_disk, capsys):
    rows = "".join(f"u{i % 300},item-{i % 5000},{i}\n" for i in range(60_000))
    (tmp_path / "e.csv").write_text("user,item,time\n" + rows)
    out = small_disk / "data"
    code = main(["--format", "events", "--input", str(tmp_path / "e.csv"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"writing {out}" in err or str(small_disk) in err, err
    assert "No space left on device" in err and ": ?" not in err
    assert sorted(p.name for p in small_disk.iterdir()) == []


def test_ids_that_other_readers_take_for_null_stay_ids(tmp_path):
    manifest = prepared(tmp_path, "e.csv", "user,item,time\nNA,null,1\nNA,nan,2\nN/A,NULL,3\n")
    assert raw_users(manifest) == ["N/A", "NA"] and sorted(raw_items(manifest)) == ["NULL", "nan", "null"]
