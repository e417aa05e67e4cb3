"""A checkpoint knows the dataset it was trained on: resuming with data.path at another dataset
(the same item count, other data) is refused by name; train.resume_other_data=true warm-starts
on it, logged (issue #50)."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import Manifest
from tests.distributed.conftest import REPO, TINY_JOB, error_line

JOB = ["train.max_steps=4", "train.checkpoint_every=2", "train.eval_every_epochs=0", "eval.at_end=false", *TINY_JOB]


def train(run_dir, dataset, *overrides):
    command = [sys.executable, "-m", "dimerec_dist.commands.train", "--run-dir", str(run_dir), "data.source=prepared"]
    command += [f"data.path={dataset}", *JOB, *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_resuming_on_another_dataset_of_the_same_catalog_is_refused_unless_asked(tiny_dataset, tmp_path):
    events = pq.read_table(tiny_dataset.parent / "raw" / "events")
    one_more = pa.table({name: [events.column(name)[0].as_py()] for name in events.column_names}, schema=events.schema)
    (tmp_path / "other").mkdir()
    pq.write_table(pa.concat_tables([events, one_more]), tmp_path / "other" / "part-00000.parquet")
    other = tmp_path / "other-prepared"
    prepare(PrepareOptions(format="events", input=tmp_path / "other", out=other))
    assert Manifest.load(other).num_items == Manifest.load(tiny_dataset).num_items
    assert Manifest.load(other).identity != Manifest.load(tiny_dataset).identity

    run_dir = tmp_path / "run"
    assert train(run_dir, tiny_dataset).returncode == 0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    line = error_line(train(run_dir, other))
    assert line.startswith(f"dimerec-train: error: {run_dir}/checkpoints/step-00000004 was trained on another dataset")
    assert f"({tiny_dataset}, identity " in line and f"not {other} (identity " in line
    assert "set train.resume_other_data=true to warm-start from it on this one" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints
    assert train(run_dir, tiny_dataset).returncode == 0, "the same dataset resumes as before"
    warm = train(run_dir, other, "train.resume_other_data=true")
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "on another dataset" in warm.stderr and "train.resume_other_data" in warm.stderr
