"""dimerec-prepare: every input format, ordering, k-core, leave-one-out, and bad input."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dimerec_dist.data.prepare import PrepareOptions, main, prepare
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def run(tmp_path, fmt, text, name="input.txt", **options):
    source = tmp_path / name
    source.write_text(text)
    out = tmp_path / f"prepared-{name}"  # one per input: prepare never overwrites an output
    prepare(PrepareOptions(format=fmt, input=source, out=out, **options))
    return Manifest.load(out)


def sequences_of(manifest):
    """{raw user: [raw items]} in the order the split files give, train + valid + test targets."""
    raw_items = read_items(manifest).column("raw_id").to_pylist()
    train = read_split(manifest, "train").to_pylist()
    test = {row["user"]: row for row in read_split(manifest, "test").to_pylist()}
    out = {}
    for row in train:
        full = test[row["user"]]["history"] + [test[row["user"]]["target"]] if row["user"] in test else row["items"]
        out[row["raw_user"]] = [raw_items[i - 1] for i in full]
    return out


def test_sequences_format_keeps_order_and_splits_leave_one_out(tmp_path):
    manifest = run(tmp_path, "sequences", "u1 a b c d\nu2 b c\nu3 c a b\n")
    assert manifest.num_users == 3 and manifest.num_items == 4
    assert sequences_of(manifest) == {"u1": list("abcd"), "u2": list("bc"), "u3": list("cab")}
    valid = read_split(manifest, "valid").to_pylist()
    test = read_split(manifest, "test").to_pylist()
    train = read_split(manifest, "train").to_pylist()
    assert [r["user"] for r in valid] == [0, 2], "u2 (2 items) has no held-out item"
    assert train[0]["items"] == [1, 2] and valid[0] == {"user": 0, "history": [1, 2], "target": 3}
    assert test[0] == {"user": 0, "history": [1, 2, 3], "target": 4}
    assert train[1]["items"] == [2, 3], "a short user keeps all its items for training"
    items = read_items(manifest).to_pylist()
    # Popularity counts training prefixes only: a in u1's; b in u1's and u2's.
    assert items[:2] == [{"item_id": 1, "raw_id": "a", "popularity": 1}, {"item_id": 2, "raw_id": "b", "popularity": 2}]
    assert manifest.data["counts"]["train_samples"] == 1 + 1 + 0


def test_movielens_orders_by_time_then_file_order(tmp_path):
    text = "1\t10\t5\t300\n1\t11\t3\t100\n1\t12\t4\t200\n1\t13\t4\t200\n2\t10\t1\t5\n"
    manifest = run(tmp_path, "movielens", text, name="u.data")
    assert sequences_of(manifest)["1"] == ["11", "12", "13", "10"]
    dat = run(tmp_path, "movielens", "1::10::5::300\n1::11::3::100\n", name="ratings.dat")
    assert sequences_of(dat)["1"] == ["11", "10"]


def test_pairs_format(tmp_path):
    manifest = run(tmp_path, "pairs", "a x\na y\nb y\na z\n")
    assert sequences_of(manifest) == {"a": ["x", "y", "z"], "b": ["y"]}


def test_events_parquet_directory_with_named_columns(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(pa.table({"uid": [1, 1, 2, 1], "vid": [7, 8, 7, 9], "ts": [3, 1, 1, 2]}), events / "part-0.parquet")
    out = tmp_path / "prepared"
    prepare(PrepareOptions(format="events", input=events, out=out, user_col="uid", item_col="vid", time_col="ts"))
    assert sequences_of(Manifest.load(out)) == {"1": ["8", "9", "7"], "2": ["7"]}


def test_kcore_keeps_only_dense_users_and_items_and_renumbers_them(tmp_path):
    # u3 has one event; dropping it leaves item c with one event, which then drops too.
    manifest = run(tmp_path, "pairs", "u1 a\nu1 b\nu1 c\nu2 a\nu2 b\nu2 d\nu3 c\n", kcore=2)
    assert sequences_of(manifest) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    assert read_items(manifest).column("item_id").to_pylist() == [1, 2], "ids stay dense after filtering"
    assert manifest.data["counts"]["events_read"] == 7 and manifest.data["counts"]["events"] == 4


def test_many_buckets_and_small_row_groups_give_the_same_dataset(tmp_path):
    text = "".join(f"u{u % 37} i{(u * 7 + k) % 23}\n" for u in range(300) for k in range(3))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = run(tmp_path / "a", "pairs", text, buckets=1)
    many = run(tmp_path / "b", "pairs", text, buckets=7, row_group_size=5, rows_per_shard=10)
    assert sequences_of(one) == sequences_of(many)
    assert len(many.split_files("train")) == 4, "37 users in shards of 10"
    groups = [g for entry in many.data["files"]["train"] for g in entry["row_groups"]]
    assert sum(g["rows"] for g in groups) == 37 and max(g["rows"] for g in groups) == 5
    assert sum(g["samples"] for g in groups) == many.data["counts"]["train_samples"]


def test_manifest_records_counts_checksums_and_options(tmp_path):
    manifest = run(tmp_path, "sequences", "u1 a b c\n", kcore=0)
    data = json.loads((tmp_path / "prepared-input.txt" / "manifest.json").read_text())
    assert data["schema_version"] == 1 and data["source"]["format"] == "sequences"
    assert data["counts"]["events"] == 3 and len(data["files"]["train"][0]["sha256"]) == 64
    assert manifest.split_files("test")[0].name == "part-00000.parquet"


@pytest.mark.parametrize(
    "fmt, text, pattern",
    [
        ("sequences", "u1 a b\nlonely\n", r"input.txt:2: expected a user followed by at least one item"),
        ("pairs", "a x\nb y z\n", r"input.txt:2: expected 2 fields"),
        ("movielens", "1\t2\t3\t4\n1\t2\t3\tnoon\n", r"input.txt:2: timestamp 'noon' is not an integer"),
        ("movielens", "1\t2\t3\n", r"input.txt:1: expected 4 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, fmt, text, pattern):
    with pytest.raises(DataError, match=pattern):
        run(tmp_path, fmt, text)


def test_bad_lines_can_be_skipped_and_are_counted(tmp_path):
    manifest = run(tmp_path, "pairs", "a x\nbroken\na y\n", skip_bad_lines=True)
    assert manifest.data["counts"]["bad_lines_skipped"] == 1
    assert sequences_of(manifest) == {"a": ["x", "y"]}


def test_missing_inputs_and_columns_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(PrepareOptions(format="pairs", input=tmp_path / "nope.txt", out=tmp_path / "o"))
    events = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user": [1], "thing": [2], "time": [3]}), events)
    with pytest.raises(DataError, match=r"e.parquet: missing column\(s\) \['item'\]"):
        prepare(PrepareOptions(format="events", input=events, out=tmp_path / "o"))
    pq.write_table(pa.table({"user": [1], "item": [2], "time": ["noon"]}), events)
    with pytest.raises(DataError, match="e.parquet:1: 'time' is not a number"):
        prepare(PrepareOptions(format="events", input=events, out=tmp_path / "o"))


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("u1 a\nu2\n")
    code = main(["--format", "sequences", "--input", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "bad.txt:2:" in err


@pytest.mark.skipif(not (SHARED / "beauty" / "Beauty.txt").is_file(), reason="shared data not present")
@pytest.mark.parametrize(
    "folder, file, fmt, users, items, events",
    [
        ("beauty", "Beauty.txt", "sequences", 22363, 12101, 198502),
        ("games", "Video.txt", "pairs", 31013, 23715, 287107),
        ("ml-100k", "u.data", "movielens", 943, 1682, 100000),
    ],
)
def test_real_data_sets_prepare_with_documented_counts(tmp_path, folder, file, fmt, users, items, events):
    prepare(PrepareOptions(format=fmt, input=SHARED / folder / file, out=tmp_path / folder))
    counts = Manifest.load(tmp_path / folder).data["counts"]
    assert (counts["users"], counts["items"], counts["events"]) == (users, items, events)


# --------------------------------------------------------------------------- TSV and RecBole atomic files

TSV = "user\titem\ttime\nu1\ta\t1\nu1\tb\t2\nu2\tc\t1\nu1\tc\t3\n"
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + (
    "u1\ta\t5\t1\nu1\tb\t4\t2\nu2\tc\t3\t1\nu1\tc\t1\t3\n"
)


def test_tab_separated_events_by_suffix_or_delimiter(tmp_path):
    by_suffix = run(tmp_path, "events", TSV, name="events.tsv")
    assert sequences_of(by_suffix) == {"u1": ["a", "b", "c"], "u2": ["c"]}
    semicolons = run(tmp_path, "events", TSV.replace("\t", ";"), name="events.csv", delimiter=";")
    assert sequences_of(semicolons) == sequences_of(by_suffix)


def test_recbole_inter_files_read_their_typed_header(tmp_path):
    columns = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp"}
    manifest = run(tmp_path, "recbole", INTER, name="data.inter", **columns)
    assert sequences_of(manifest) == {"u1": ["a", "b", "c"], "u2": ["c"]}
    assert manifest.data["counts"]["events"] == 4


def test_the_cli_defaults_to_recboles_column_names(tmp_path):
    (tmp_path / "data.inter").write_text(INTER)
    assert main(["--format", "recbole", "--input", str(tmp_path / "data.inter"), "--out", str(tmp_path / "o")]) == 0
    assert sequences_of(Manifest.load(tmp_path / "o")) == {"u1": ["a", "b", "c"], "u2": ["c"]}


@pytest.mark.parametrize(
    "header, pattern",
    [
        ("user_id\titem_id:token\ttimestamp:float", r"data.inter:1: header field 1 'user_id' is not name:type"),
        ("user_id:token\titem_id:id\ttimestamp:float", r"header field 2 'item_id:id' is not name:type"),
        ("uid:token\titem_id:token\ttimestamp:float", r"missing column\(s\) \['user_id'\]"),
    ],
)
def test_a_bad_recbole_header_is_named(tmp_path, header, pattern):
    columns = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp"}
    with pytest.raises(DataError, match=pattern):
        run(tmp_path, "recbole", header + "\nu1\ta\t1\n", name="data.inter", **columns)


def test_a_row_of_the_wrong_width_is_named_by_line_or_skipped_and_counted(tmp_path):
    text = TSV.replace("u2\tc\t1\n", "u2\tc\n")
    with pytest.raises(DataError, match=r"events.tsv:4: expected 3 fields \(tab-separated\), found 2: 'u2\\tc'"):
        run(tmp_path, "events", text, name="events.tsv")
    manifest = run(tmp_path, "events", text, name="skip.tsv", skip_bad_lines=True)
    assert manifest.data["counts"]["bad_lines_skipped"] == 1
    assert sequences_of(manifest) == {"u1": ["a", "b", "c"]}
    columns = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp"}
    with pytest.raises(DataError, match=r"data.inter:3: expected 4 fields \(tab-separated\), found 3"):
        run(tmp_path, "recbole", INTER.replace("u1\tb\t4\t2", "u1\tb\t2"), name="data.inter", **columns)


def test_a_bad_value_in_a_recbole_float_column_is_an_error_naming_the_file(tmp_path):
    columns = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp"}
    with pytest.raises(DataError, match=r"bad.inter:\d+: 'timestamp' is not a number: .*noon"):
        run(tmp_path, "recbole", INTER.replace("\t2\n", "\tnoon\n"), name="bad.inter", **columns)
