"""Skewed logs: one user with far more events than the rest. Row groups are dealt whole, so the
stream holding that user's group ran long and the others short; the shortest set the steps and
a 2-stream job trained ~1 step an epoch where one stream trained hundreds (issue #50). A heavy
group is planned as slices now: no stream starves, every sample is still read at most once, and
a plan that would drop more than 5% of an epoch says so."""

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import Manifest
from dimerec_dist.data.stream import DataPlan, row_groups
from tests.data.test_stream import MODES, as_rows, stream


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """200 users with 3..12 items each, and one user with 6,000 events."""
    root = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(1)
    lines = [f"u{u} " + " ".join(f"i{x}" for x in rng.integers(0, 60, rng.integers(3, 13))) for u in range(200)]
    lines.insert(77, "whale " + " ".join(f"i{x}" for x in rng.integers(0, 60, 6000)))
    (root / "seqs.txt").write_text("\n".join(lines) + "\n")
    prepare(PrepareOptions(format="sequences", input=root / "seqs.txt", out=root / "prepared", row_group_size=8))
    return Manifest.load(root / "prepared")


@pytest.mark.parametrize("streams", [2, 4, 8])
def test_no_stream_starves_a_two_rank_job_trains_as_many_steps_as_one_rank(skewed, streams):
    total = skewed.data["counts"]["train_samples"]
    groups = row_groups(skewed)
    assert max(g.samples for g in groups) > total / 2, "one row group holds most of the samples"
    one_stream = DataPlan(groups, 1, 64, seed=3, sample_mode="all", num_items=skewed.num_items)
    plan = DataPlan(groups, streams, 64, seed=3, sample_mode="all", num_items=skewed.num_items)
    assert plan.steps(0) >= 0.95 * one_stream.steps(0), (plan.steps(0), one_stream.steps(0))
    assert plan.dropped_share(0) < 0.05


@pytest.mark.parametrize("mode", MODES + ["random_cut"])
def test_a_split_group_is_read_whole_once_over_its_slices(skewed, mode):
    """Two ranks over four streams read, between them, the one-rank stream's samples, each at most once."""
    one = Counter()
    for _, history, targets in stream(skewed, streams=4, mode=mode).batches(0):
        one.update(as_rows(history, targets))
    two = Counter()
    for rank in range(2):
        for _, history, targets in stream(skewed, world=2, rank=rank, streams=4, mode=mode).batches(0):
            two.update(as_rows(history, targets))
    assert one == two
    if mode != "random_cut":  # few left out (that none is read twice: the slices partition their group, below)
        assert sum(one.values()) >= 0.95 * skewed.data["counts"]["train_samples"]


def test_slices_partition_the_group_they_come_from(skewed):
    plan = DataPlan(row_groups(skewed), 4, 64, seed=3, sample_mode="all", num_items=skewed.num_items)
    slices = [g for g in plan.groups if g.parts > 1]
    assert slices and len({(g.file, g.index) for g in slices}) == 1
    from dimerec_dist.data.stream import decode_group

    whole = decode_group(*plan.decode_arguments(slices[0], 0)[:8])
    pairs = set()
    for part in slices:
        decoded = decode_group(*plan.decode_arguments(part, 0))
        assert len(decoded.seqs) == part.samples
        chosen = set(zip(decoded.seqs.tolist(), decoded.positions.tolist()))
        assert not pairs & chosen
        pairs |= chosen
    assert pairs == set(zip(whole.seqs.tolist(), whole.positions.tolist()))


def test_groups_of_alike_size_are_planned_as_before(skewed, tmp_path):
    lines = [f"u{u} a b c d e f" for u in range(100)]
    (tmp_path / "seqs.txt").write_text("\n".join(lines) + "\n")
    prepare(PrepareOptions(format="sequences", input=tmp_path / "seqs.txt", out=tmp_path / "p", row_group_size=8))
    groups = row_groups(Manifest.load(tmp_path / "p"))
    assert DataPlan(groups, 2, 16, seed=3, sample_mode="all", num_items=6).groups is groups


def test_a_plan_that_drops_more_than_5_percent_is_a_warning(tiny_dataset, tmp_path):
    from tests.distributed.conftest import REPO, TINY_JOB

    command = [
        sys.executable,
        "-m",
        "dimerec_dist.commands.train",
        "--run-dir",
        str(tmp_path / "run"),
        "data.source=prepared",
    ]
    command += [f"data.path={tiny_dataset}", *TINY_JOB, "train.batch_size=1024", "data.streams=4", "train.max_steps=1"]
    done = subprocess.run(
        command + ["train.eval_every_epochs=0", "eval.at_end=false"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the data plan reads only" in done.stderr
