"""ComiRec's user-split protocol: held-out users, 80% of their history in, the rest as targets;
HR, Recall and NDCG over several targets."""

import numpy as np
import pyarrow as pa
import pytest

from dimerec_dist.data.prepare import PrepareOptions, held_out_part, prepare
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.evaluation.ranking import multi_target_metrics, ranking_metrics


def test_multi_target_metrics_by_hand():
    topk = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [7, 6, 5, 4]])
    items, offsets = np.array([3, 1, 11, 8, 2, 1]), np.array([0, 3, 5, 6])
    m = multi_target_metrics(topk, items, offsets, [2, 4])
    ideal2 = 1 + 1 / np.log2(3)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["recall@2"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
    assert m["ndcg@2"] == pytest.approx(((1 / np.log2(3)) / ideal2 + 1 / ideal2) / 3)
    assert m["recall@4"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_one_target_each_gives_the_leave_one_out_numbers():
    topk = np.array([[5, 3, 9, 1], [2, 4, 6, 8], [7, 6, 5, 4]])
    targets = np.array([3, 8, 1])
    multi = multi_target_metrics(topk, targets, np.arange(4), [2, 4])
    single = ranking_metrics(topk, targets, [2, 4])
    for key, value in single.items():
        assert multi[key] == pytest.approx(value)
    assert multi["recall@4"] == pytest.approx(single["hr@4"])


def test_prepare_holds_out_users_and_splits_their_histories(tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 10)
    events = pa.table(
        {
            "user": users.astype(str),
            "item": rng.integers(0, 60, len(users)).astype(str),
            "time": np.tile(np.arange(10), 400).astype(float),
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(events, tmp_path / "events.parquet")
    prepare(PrepareOptions(format="events", input=tmp_path / "events.parquet", out=tmp_path / "out", split="user"))
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.protocol == "user"
    train, test = read_split(manifest, "train"), read_split(manifest, "test")
    valid = read_split(manifest, "valid")
    held = set(test.column("user").to_pylist()) | set(valid.column("user").to_pylist())
    assert not held & set(train.column("user").to_pylist()), "held-out users never appear in training"
    assert 40 <= len(held) <= 120, "about 20% of 400 users"
    parts = held_out_part(np.array(sorted(held)))
    assert set(parts.tolist()) <= {1, 2}
    users_ = EvaluationUsers(test, max_history=50)
    assert users_.multi_target
    lengths = np.diff(users_.offsets)
    assert (lengths == 8).all() and (np.diff(users_.target_offsets) == 2).all(), "10 items: 8 in, 2 targets"
    assert train.num_rows + test.num_rows + valid.num_rows == 400


def test_a_user_split_job_reports_recall_and_matches_across_world_sizes(tmp_path):
    import json

    from tests.distributed.conftest import TINY_JOB, torchrun

    common = [
        "data.source=synthetic",
        "data.synth_users=400",
        "data.synth_items=300",
        "data.synth_events=8000",
        f"data.path={tmp_path / 'data'}",
        "data.split=user",
        "train.max_steps=10",
        "train.eval_every_epochs=0",
        *TINY_JOB,
    ]
    finals = []
    for world in (1, 2):
        torchrun(world, "dimerec_dist.commands.train", "--run-dir", str(tmp_path / f"run{world}"), *common)
        finals.append(json.loads((tmp_path / f"run{world}" / "final.json").read_text()))
    one, two = finals
    assert one["protocol"]["split"] == "user" and {"hr@10", "recall@10", "ndcg@10"} <= set(one["test"])
    assert one["test"] == two["test"] and one["popularity"] == two["popularity"]


def test_a_job_asking_for_another_split_than_the_data_has_is_refused(tiny_dataset, tmp_path):
    import subprocess
    import sys

    from tests.distributed.conftest import REPO, TINY_JOB

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dimerec_dist.commands.train",
            "--run-dir",
            str(tmp_path / "run"),
            "data.source=prepared",
            f"data.path={tiny_dataset}",
            "data.split=user",
            *TINY_JOB,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "prepared with the leave-one-out split" in done.stderr, done.stderr[-2000:]
