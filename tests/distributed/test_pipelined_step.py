"""The pipelined step (TorchRec's TrainPipelineSparseDist) computes what the plain step computes.

The same data, seed and batches, 50 steps over three epochs (a validation between each two, which
takes the model back from the pipeline and gives it again), on 1 and 2 ranks: the per-step
losses of train.pipeline=true equal train.pipeline=false within 1e-6 relative (on CPU the
pipeline runs the same operations in another order), and so do the final metrics. That the
pipeline really ran the table's input ahead, instead of falling back to a plain step, is
checked by the trainer itself at every step (train_step.PipelinedStepRunner).
"""

import json

import pytest

from tests.distributed.conftest import TINY_JOB, read_jsonl, torchrun, two_at_a_time

LOSSES = ("loss/total", "loss/gem", "loss/recon", "loss/ssm")
STEPS = 50
RUNS = {(world, pipeline): None for world in (1, 2) for pipeline in (True, False)}


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelined")

    def train(key):
        world, pipeline = key
        run_dir = root / f"world-{world}-pipeline-{pipeline}"
        torchrun(
            world,
            "dimerec_dist.commands.train",
            "--run-dir",
            str(run_dir),
            "data.source=prepared",
            f"data.path={tiny_dataset}",
            *TINY_JOB,
            "train.batch_size=256",  # ~20 steps an epoch: the 50 steps cross epoch ends
            f"train.max_steps={STEPS}",
            f"train.pipeline={str(pipeline).lower()}",
        )
        return run_dir

    return dict(zip(RUNS, two_at_a_time(train, RUNS)))


def losses(run_dir):
    return [row for row in read_jsonl(run_dir / "metrics.jsonl") if "loss/total" in row]


@pytest.mark.parametrize("world", [1, 2])
def test_pipelined_and_plain_steps_give_the_same_losses_for_50_steps(runs, world):
    pipelined, plain = losses(runs[world, True]), losses(runs[world, False])
    assert [r["step"] for r in pipelined] == [r["step"] for r in plain] == list(range(1, STEPS + 1))
    assert len({r["epoch"] for r in plain}) >= 2, "the run crosses epoch ends"
    for a, b in zip(plain, pipelined):
        for key in LOSSES:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), f"step {a['step']} {key}"


@pytest.mark.parametrize("world", [1, 2])
def test_pipelined_and_plain_runs_end_with_the_same_metrics(runs, world):
    pipelined = json.loads((runs[world, True] / "final.json").read_text())
    plain = json.loads((runs[world, False] / "final.json").read_text())
    assert pipelined["valid"] == plain["valid"] and pipelined["test"] == plain["test"]
