"""Training in sequence mode end to end (2 ranks, gloo): a SIGKILLed rank restarts and the run
ends with the uninterrupted run's losses, bitwise; and train.max_minutes, which the equal
wall-clock comparisons of the two modes use, stops, evaluates, and is not spent twice; and
train.patience, which stops once validation stops improving."""

import json
from concurrent.futures import ThreadPoolExecutor

from tests.distributed.conftest import TINY_JOB, faulty_train, losses_by_step, read_jsonl, torchrun

SEQUENCE = ["data.sample_mode=sequence", "data.chunk_targets=8", "model.attention_positions=bias"]


def job(dataset, *extra):
    return ["data.source=prepared", f"data.path={dataset}", *TINY_JOB, *SEQUENCE, *extra]


def test_a_sigkilled_rank_restarts_and_the_run_ends_with_the_uninterrupted_losses(tiny_dataset, tmp_path):
    overrides = job(tiny_dataset, "train.max_steps=40", "train.checkpoint_every=10", "train.eval_every_epochs=0")
    with ThreadPoolExecutor(max_workers=1) as beside:  # the reference and the killed run at once
        reference = beside.submit(
            torchrun, 2, "dimerec_dist.commands.train", "--run-dir", str(tmp_path / "uninterrupted"), *overrides
        )
        done = faulty_train(2, tmp_path / "killed", "--kill-at-step", "25", "--kill-rank", "1", *overrides, restarts=1)
        reference.result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and "step-00000020" in done.stderr
    uninterrupted = losses_by_step(tmp_path / "uninterrupted")
    assert len(uninterrupted) == 40
    assert losses_by_step(tmp_path / "killed") == uninterrupted


def test_max_minutes_stops_validates_evaluates_and_a_rerun_trains_no_further(tiny_dataset, tmp_path):
    """Rank 1's clock reads 1.5 s ahead of rank 0's (it started earlier): its clock spends the budget,
    and the checkpoint says so whichever rank's clock it records, so the rerun trains no step."""
    run_dir = tmp_path / "budget"
    # 0.1 s a step and a 3-second budget of which rank 1's clock has spent 1.5 s: ~15 steps of an
    # epoch of ~100, of 1,000 epochs.
    overrides = job(tiny_dataset, "train.epochs=1000", "train.max_minutes=0.05")
    done = faulty_train(2, run_dir, "--step-delay", "0.1", "--clock-ahead", "1:1.5", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train.max_minutes=0.05 spent at step" in done.stderr
    steps = max(losses_by_step(run_dir))
    assert 5 <= steps < 62, steps  # well inside the first epoch
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("valid/hr@10" in row and row["step"] == steps for row in rows), "validated where it stopped"
    final = json.loads((run_dir / "final.json").read_text())
    assert 0 <= final["test"]["hr@10"] <= 1

    again = faulty_train(2, run_dir, *overrides)  # resume=auto: the budget is spent, so only the final evaluation
    assert again.returncode == 0, again.stderr[-3000:]
    assert max(losses_by_step(run_dir)) == steps
    again_final = json.loads((run_dir / "final.json").read_text())
    assert again_final["test"] == final["test"] and again_final["valid"] == final["valid"]  # latency aside


def test_patience_stops_once_validation_stops_improving(tiny_dataset, tmp_path):
    """Learning rates of 1e-9 leave the rankings as they were: the first validation is the best, and
    with patience 2 the job stops after the third epoch of 50."""
    run_dir = tmp_path / "patience"
    still = ["train.dense_lr=1e-9", "train.sparse_lr=1e-9", "train.epochs=50", "train.patience=2"]
    done = faulty_train(1, run_dir, *job(tiny_dataset, *still))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "early stop after epoch 2: 2 validations without a better" in done.stderr
    validations = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "valid/hr@10" in row]
    assert len(validations) == 3
    assert (run_dir / "final.json").is_file()
