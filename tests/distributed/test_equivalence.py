"""The distributed path computes what one process computes.

Same data, seed and global batch: 1 rank and 2 ranks (row-wise, and table-wise where
rank 1 holds no rows) must give the same losses step by step (within 1e-4 relative;
measured ~1e-6, float summation order), the same metrics exactly, and the sharded
evaluation must equal a brute-force single-process ranking.
"""

import json

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dimerec_dist.config import load_config
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.evaluate import mask_rows, ranking_metrics, user_starts
from dimerec_dist.model import DimeRec
from tests.distributed.conftest import TINY_JOB, read_jsonl, torchrun

LOSSES = ("loss/total", "loss/gem", "loss/recon", "loss/ssm")


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for world, sharding in ((1, "row_wise"), (2, "row_wise"), (2, "table_wise")):
        run_dir = root / f"world{world}-{sharding}"
        done = torchrun(world, "dimerec_dist.train", "--run-dir", str(run_dir), "data.source=prepared",
                        f"data.path={tiny_dataset}", "train.max_steps=20", "train.eval_every_epochs=0",
                        f"sharding.type={sharding}", *TINY_JOB)
        out[world if sharding == "row_wise" else sharding] = (run_dir, done.stdout + done.stderr)
    return out


@pytest.mark.parametrize("other", [2, "table_wise"])
def test_one_and_two_ranks_give_the_same_losses_for_20_steps(runs, other):
    one = [row for row in read_jsonl(runs[1][0] / "metrics.jsonl") if "loss/total" in row]
    two = [row for row in read_jsonl(runs[other][0] / "metrics.jsonl") if "loss/total" in row]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 21))
    for a, b in zip(one, two):
        for key in LOSSES:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), f"step {a['step']} {key}"
    assert one[-1]["loss/total"] < one[0]["loss/total"], "20 steps should already lower the loss"


def test_two_ranks_shard_the_table_row_wise_and_log_the_plan(runs):
    run_dir, output = runs[2]
    plan = (run_dir / "sharding_plan.txt").read_text()
    assert "row_wise" in plan and "rank:0" in plan and "rank:1" in plan
    assert "memory per rank (row_wise, 2 ranks)" in plan and "memory per rank (row_wise, 2 ranks)" in output
    rows = [int(line.split()[2].replace(",", "")) for line in plan.splitlines() if line.startswith("rank ")]
    assert len(rows) == 2 and sum(rows) == 301 and abs(rows[0] - rows[1]) <= 1, "the 301 rows split evenly"


@pytest.mark.parametrize("other", [2, "table_wise"])
def test_final_metrics_are_identical_across_world_sizes(runs, other):
    one = json.loads((runs[1][0] / "final.json").read_text())
    two = json.loads((runs[other][0] / "final.json").read_text())
    assert one["test"] == two["test"] and one["valid"] == two["valid"]
    assert set(one["test"]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (10, 20, 50)}
    assert one["popularity"] == two["popularity"]


def brute_force_test_metrics(run_dir, dataset, tmp_path):
    """Rank every item for every test user in one process, with no torch.distributed at all."""
    config = load_config(run_dir / "config.yaml")
    dcp_to_torch_save(str(run_dir / "model"), str(tmp_path / "model.pt"))
    state = torch.load(tmp_path / "model.pt", weights_only=False)
    table = next(v for k, v in state.items() if k.endswith("embeddings.item.weight"))
    model = DimeRec(config.model).eval()
    model.load_state_dict({k.split("dimerec.", 1)[1]: v for k, v in state.items() if "dimerec." in k})
    manifest = Manifest.load(dataset)
    users = EvaluationUsers(read_split(manifest, "test"), config.model.max_history)
    history, seen, targets = users.batch(np.arange(len(users)))
    ids = torch.from_numpy(history.ids)
    mask = ids != 0
    queries = model.user_embedding(table[ids] * mask.unsqueeze(-1), mask,
                                   start=user_starts(users.users, config.model.embedding_dim, config.seed))
    width = max(len(s) for s in seen)
    seen_ids = torch.tensor([list(s) + [0] * (width - len(s)) for s in seen])
    scores = mask_rows(model.item_scores(queries, table), 0, seen_ids)
    topk = torch.topk(scores, 50, dim=1).indices.numpy()
    return ranking_metrics(topk, targets, [10, 20, 50])


def test_sharded_evaluation_equals_single_process_brute_force(runs, tiny_dataset, tmp_path):
    reference = brute_force_test_metrics(runs[2][0], tiny_dataset, tmp_path)
    sharded = json.loads((runs[2][0] / "final.json").read_text())["test"]
    assert sharded == reference


def test_dimerec_eval_reloads_a_model_on_another_world_size(runs):
    run_dir = runs[1][0]
    torchrun(2, "dimerec_dist.eval_cli", "--run-dir", str(run_dir))
    evaluated = json.loads((run_dir / "eval.json").read_text())
    final = json.loads((run_dir / "final.json").read_text())
    assert evaluated["test"] == final["test"] and evaluated["valid"] == final["valid"]


def test_tensorboard_events_hold_the_training_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs[2][0] / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {*LOSSES, "lr/dense", "lr/sparse", "grad_norm/dense", "throughput/samples_per_s",
            "final/test/hr@10"} <= tags
    assert len(events.Scalars("loss/total")) == 20


def test_a_model_of_another_shape_is_refused_before_loading(runs):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dimerec_dist.eval_cli", "--run-dir", str(runs[1][0]),
                           "model.embedding_dim=32"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "saved by a different model: embedding_dim (saved 16, now 32)" in done.stderr
