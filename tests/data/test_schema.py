"""Reading a prepared dataset: corrupt, inconsistent or foreign files are named, never used."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import EVAL_SCHEMA, DataError, Manifest, read_split
from dimerec_dist.runtime.integrity import file_sha256


@pytest.fixture
def prepared(tmp_path):
    source = tmp_path / "seq.txt"
    source.write_text("u1 a b c d\nu2 b c a\nu3 c d\n")
    out = tmp_path / "prepared"
    prepare(PrepareOptions(format="sequences", input=source, out=out))
    return out


def rewrite(prepared, split, table):
    """Replace a split's shard and fix its checksum, so only the content check can object."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    entry = manifest["files"][split][0]
    pq.write_table(table, prepared / entry["path"])
    entry["sha256"] = file_sha256(prepared / entry["path"])
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    return prepared / entry["path"]


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="manifest.json does not exist: run dimerec-prepare"):
        Manifest.load(tmp_path)


def test_truncated_shard_fails_its_checksum(prepared):
    shard = prepared / "test" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"test/part-00000.parquet: checksum differs"):
        Manifest.load(prepared)


def test_truncated_shard_without_checksums_is_an_unreadable_parquet(prepared):
    shard = rewrite(prepared, "test", pa.table({"user": [0]}))
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_split(Manifest.load(prepared, verify_checksums=False), "test")


def test_listed_shard_missing(prepared):
    (prepared / "valid" / "part-00000.parquet").unlink()
    with pytest.raises(DataError, match="valid file valid/part-00000.parquet is listed but missing"):
        Manifest.load(prepared)


def test_wrong_column_types(prepared):
    rewrite(prepared, "test", pa.table({"user": [0], "history": [["1"]], "target": [2]}))
    with pytest.raises(DataError, match="is not the test schema"):
        read_split(Manifest.load(prepared), "test")


@pytest.mark.parametrize(
    "history, target, pattern",
    [
        ([[1, 99]], [2], r"column 'history' row 0 holds item id 99, outside the manifest's 1..4"),
        ([[1, 2]], [0], r"column 'target' row 0 holds item id 0"),
        ([[1, -3]], [2], r"item id -3"),
        ([[1, None]], [2], r"null in column 'history' at row 0"),
        ([[]], [2], r"column 'history' row 0 is an empty list"),
    ],
)
def test_bad_ids_and_empty_histories_name_file_column_and_row(prepared, history, target, pattern):
    shard = rewrite(
        prepared,
        "test",
        pa.table(
            [pa.array([0]), pa.array(history, pa.list_(pa.int64())), pa.array(target, pa.int64())], schema=EVAL_SCHEMA
        ),
    )
    with pytest.raises(DataError, match=pattern) as info:
        read_split(Manifest.load(prepared), "test")
    assert str(shard) in str(info.value)


def test_manifest_from_another_schema_version(prepared):
    data = json.loads((prepared / "manifest.json").read_text())
    data["schema_version"] = 99
    (prepared / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="schema_version 99"):
        Manifest.load(prepared)


def test_a_shard_not_listed_in_the_manifest_is_refused(prepared):
    import shutil

    shutil.copy(prepared / "test" / "part-00000.parquet", prepared / "test" / "part-00007.parquet")
    with pytest.raises(DataError, match="test/part-00007.parquet is in the dataset but not listed in the manifest"):
        Manifest.load(prepared)


def test_duplicate_shards_are_refused(prepared):
    data = json.loads((prepared / "manifest.json").read_text())
    data["files"]["train"].append(dict(data["files"]["train"][0]))
    (prepared / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="train/part-00000.parquet is listed twice"):
        Manifest.load(prepared)
    data["files"]["train"][1] = dict(data["files"]["train"][0], path="train/part-00001.parquet")
    (prepared / "train" / "part-00001.parquet").write_bytes((prepared / "train" / "part-00000.parquet").read_bytes())
    (prepared / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="are duplicates \\(same checksum\\)"):
        Manifest.load(prepared)
