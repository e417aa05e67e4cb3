"""dimerec-prepare's output: never overwritten by default, replaced whole with --overwrite,
nothing created for a missing input, one-line errors for places it cannot write."""

import pytest

from dimerec_dist.data.prepare import PrepareOptions, main, prepare
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.runtime.output_dir import publish, recover, staging_path

MANY_USERS = "".join(f"u{u} a b c\n" for u in range(40))


def run(tmp_path, text, out, **options):
    source = tmp_path / "input.txt"
    source.write_text(text)
    prepare(PrepareOptions(format="sequences", input=source, out=out, rows_per_shard=8, **options))
    return Manifest.load(out)


def one_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("dimerec-prepare: error:"), err
    return err


def test_an_existing_dataset_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "data"
    before = run(tmp_path, MANY_USERS, out)
    files = sorted(p.name for p in out.rglob("*"))
    (tmp_path / "small.txt").write_text("u0 x y z\n")
    code = main(["--format", "sequences", "--input", str(tmp_path / "small.txt"), "--out", str(out)])
    assert "is never overwritten (pass --overwrite" in one_line(capsys, code)
    assert sorted(p.name for p in out.rglob("*")) == files
    assert Manifest.load(out).data == before.data


def test_overwrite_replaces_the_whole_dataset_no_stale_shard_survives(tmp_path):
    out = tmp_path / "data"
    assert len(run(tmp_path, MANY_USERS, out).split_files("train")) >= 2
    after = run(tmp_path, "v0 x y z\n", out, overwrite=True)  # fewer shards than before
    assert len(after.split_files("train")) == 1 and after.num_users == 1
    assert [row["raw_user"] for row in read_split(after, "train").to_pylist()] == ["v0"]
    assert not staging_path(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data", "input.txt"]


def test_a_failed_overwrite_leaves_the_old_dataset(tmp_path):
    out = tmp_path / "data"
    before = run(tmp_path, MANY_USERS, out)
    with pytest.raises(ValueError, match="input.txt:2"):
        run(tmp_path, "v0 x y\nlonely\n", out, overwrite=True)
    assert Manifest.load(out).data == before.data and not staging_path(out).exists()


def test_an_overwrite_killed_between_its_renames_is_undone_next_time(tmp_path):
    out = tmp_path / "data"
    before = run(tmp_path, MANY_USERS, out)
    out.rename(out.with_name(".data.old"))  # where a kill after the first rename leaves it
    recover(out)
    assert Manifest.load(out).data == before.data


def test_publish_swaps_a_complete_directory_in(tmp_path):
    target, staging = tmp_path / "t", staging_path(tmp_path / "t")
    target.mkdir()
    (target / "old").write_text("old")
    staging.mkdir()
    (staging / "new").write_text("new")
    publish(staging, target)
    assert [p.name for p in target.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_missing_input_creates_nothing(tmp_path, capsys):
    code = main(["--format", "pairs", "--input", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "out")])
    assert "absent.txt does not exist" in one_line(capsys, code)
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "input.txt").write_text("u0 a b c\n")
    (tmp_path / "out").write_text("not a directory")
    code = main(["--format", "sequences", "--input", str(tmp_path / "input.txt"), "--out", str(tmp_path / "out")])
    assert "out is a file" in one_line(capsys, code)
    assert (tmp_path / "out").read_text() == "not a directory"


def test_a_read_only_out_is_a_one_line_error(tmp_path, capsys, read_only_dir):
    (tmp_path / "input.txt").write_text("u0 a b c\n")
    code = main(["--format", "sequences", "--input", str(tmp_path / "input.txt"), "--out", str(read_only_dir / "data")])
    assert "is not writable" in one_line(capsys, code)
