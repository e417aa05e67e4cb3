"""The distributed path computes what one process computes.

Same data, seed and global batch: 1 rank and 2 ranks must give the same losses step by
step (within 1e-4 relative; measured ~3e-7, float summation order) and the same metrics
exactly, for every sharding type: row-wise, table-wise (rank 1 holds no rows),
data-parallel, column-wise. The sharded evaluation must equal a brute-force
single-process ranking.

Row-wise Adagrad divides a row's step by the root of its mean squared gradient, which
hides a wrong gradient *scale*; the SGD pairs would show one (they also gather in-batch
negatives from every rank and send their gradients back). Column-wise with row-wise
Adagrad keeps an accumulator per row and column block, so it is compared with one rank
holding the same blocks; with SGD it is compared with plain row-wise. The SGD runs also train
with classifier-free guidance, whose per-sample draw must not depend on the world size.
Sequence mode trains the same on 1 and 2 ranks too (each rank cuts chunks from its slice).
"""

import json

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dimerec_dist.config import load_config
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.evaluation.ranking import mask_rows, ranking_metrics, user_starts
from dimerec_dist.model import DimeRec
from tests.distributed.conftest import TINY_JOB, read_jsonl, torchrun, two_at_a_time

LOSSES = ("loss/total", "loss/gem", "loss/recon", "loss/ssm")
SGD = ["train.sparse_optimizer=sgd", "train.sparse_lr=0.5"]
COLUMN_BLOCKS = ["sharding.type=column_wise", "sharding.column_block=8"]
IN_BATCH = ["train.in_batch_negatives=true", "train.negative_sampler=popularity"]
# Classifier-free guidance: each sample's null-guidance draw must not depend on the world size.
GUIDANCE = ["model.guidance_dropout=0.25", "model.guidance_scale=1"]
# Sequence mode: chunks cut from each rank's slice, the score-bias positions.
SEQUENCE = ["data.sample_mode=sequence", "data.chunk_targets=8", "model.attention_positions=bias"]
RUNS = {  # name: (ranks, overrides)
    "one": (1, []),
    "row_wise": (2, []),
    "table_wise": (2, ["sharding.type=table_wise"]),
    "data_parallel": (2, ["sharding.type=data_parallel"]),
    "one_column_blocks": (1, COLUMN_BLOCKS),
    "column_wise": (2, COLUMN_BLOCKS),
    # SGD, with in-batch negatives gathered from all ranks (their gradients sent back), popularity
    # negatives and logQ; and classifier-free guidance.
    "one_sgd": (1, [*SGD, *IN_BATCH, *GUIDANCE]),
    "row_wise_sgd": (2, [*SGD, *IN_BATCH, *GUIDANCE]),
    "column_wise_sgd": (2, ["sharding.type=column_wise", *SGD, *IN_BATCH, *GUIDANCE]),
    "one_sequence": (1, [*SEQUENCE, *SGD, *IN_BATCH]),
    "row_wise_sequence": (2, [*SEQUENCE, *SGD, *IN_BATCH]),
}
PAIRS = [
    ("one", "row_wise"),
    ("one", "table_wise"),
    ("one", "data_parallel"),
    ("one_column_blocks", "column_wise"),
    ("one_sgd", "row_wise_sgd"),
    ("one_sgd", "column_wise_sgd"),
    ("one_sequence", "row_wise_sequence"),
]


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")

    def train(name):
        world, overrides = RUNS[name]
        done = torchrun(
            world,
            "dimerec_dist.commands.train",
            "--run-dir",
            str(root / name),
            "data.source=prepared",
            f"data.path={tiny_dataset}",
            "train.max_steps=20",
            "train.eval_every_epochs=0",
            *TINY_JOB,
            *overrides,
        )
        return root / name, done.stdout + done.stderr

    out = dict(zip(RUNS, two_at_a_time(train, RUNS)))
    out[1], out[2] = out["one"], out["row_wise"]
    return out


@pytest.mark.parametrize("single,sharded", PAIRS)
def test_one_and_two_ranks_give_the_same_losses_for_20_steps(runs, single, sharded):
    one = [row for row in read_jsonl(runs[single][0] / "metrics.jsonl") if "loss/total" in row]
    two = [row for row in read_jsonl(runs[sharded][0] / "metrics.jsonl") if "loss/total" in row]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 21))
    for a, b in zip(one, two):
        for key in LOSSES:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), f"step {a['step']} {key}"
    assert one[-1]["loss/total"] < one[0]["loss/total"], "20 steps should already lower the loss"


def test_each_sharding_type_lays_the_table_out_as_its_name_says(runs):
    def pieces(name):
        plan = (runs[name][0] / "sharding_plan.txt").read_text()
        return [line for line in plan.splitlines() if line.startswith("rank ")]

    assert pieces("table_wise")[1].startswith("rank 1: 0 rows")
    assert all("301 rows x 16 columns" in line for line in pieces("data_parallel"))  # a replica each
    assert all("301 rows x 8 columns," in line for line in pieces("column_wise"))  # one block each
    assert "301 rows x 8 columns + 301 rows x 8 columns" in pieces("one_column_blocks")[0]


def test_two_ranks_shard_the_table_row_wise_and_log_the_plan(runs):
    run_dir, output = runs[2]
    plan = (run_dir / "sharding_plan.txt").read_text()
    assert "row_wise" in plan and "rank:0" in plan and "rank:1" in plan
    assert "memory per rank (row_wise, 2 ranks)" in plan and "memory per rank (row_wise, 2 ranks)" in output
    rows = [int(line.split()[2].replace(",", "")) for line in plan.splitlines() if line.startswith("rank ")]
    assert len(rows) == 2 and sum(rows) == 301 and abs(rows[0] - rows[1]) <= 1, "the 301 rows split evenly"


@pytest.mark.parametrize("single,sharded", PAIRS)
def test_final_metrics_are_identical_across_world_sizes(runs, single, sharded):
    one = json.loads((runs[single][0] / "final.json").read_text())
    two = json.loads((runs[sharded][0] / "final.json").read_text())
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
    queries = model.user_embedding(
        table[ids] * mask.unsqueeze(-1), mask, start=user_starts(users.users, config.model.embedding_dim, config.seed)
    )
    width = max(len(s) for s in seen)
    seen_ids = torch.tensor([list(s) + [0] * (width - len(s)) for s in seen])
    scores = mask_rows(model.item_scores(queries, table), 0, seen_ids)
    topk = torch.topk(scores, 50, dim=1).indices.numpy()
    return ranking_metrics(topk, targets, [10, 20, 50])


@pytest.mark.parametrize("name", ["row_wise", "data_parallel", "column_wise"])
def test_sharded_evaluation_equals_single_process_brute_force(runs, name, tiny_dataset, tmp_path):
    reference = brute_force_test_metrics(runs[name][0], tiny_dataset, tmp_path)
    sharded = json.loads((runs[name][0] / "final.json").read_text())["test"]
    assert sharded == reference


@pytest.mark.parametrize("name,sharding", [("one", "row_wise"), ("data_parallel", "column_wise")])
def test_dimerec_eval_reloads_a_model_on_another_world_size_and_sharding(runs, name, sharding):
    run_dir = runs[name][0]
    torchrun(2, "dimerec_dist.commands.evaluate", "--run-dir", str(run_dir), f"sharding.type={sharding}")
    evaluated = json.loads((run_dir / "eval.json").read_text())
    final = json.loads((run_dir / "final.json").read_text())
    assert evaluated["test"] == final["test"] and evaluated["valid"] == final["valid"]


def test_tensorboard_events_hold_the_training_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs[2][0] / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {*LOSSES, "lr/dense", "lr/sparse", "grad_norm/dense", "throughput/samples_per_s", "final/test/hr@10"} <= tags
    assert len(events.Scalars("loss/total")) == 20


def test_a_model_of_another_shape_is_refused_before_loading(runs):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dimerec_dist.commands.evaluate",
            "--run-dir",
            str(runs[1][0]),
            "model.embedding_dim=32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "saved by a different model: embedding_dim (saved 16, now 32)" in done.stderr
