"""A disk that fills during a 2-rank job: every rank stops with one line naming what could not be
written and the newest whole checkpoint, at a save (a checkpoint that meets the full disk removes
its partial files; metrics that could not be written stop the job before the next checkpoint),
and once space is freed the job launched again resumes and ends with an uninterrupted run's
losses (issue #50). Real ENOSPC: the run directory is a small tmpfs that tools/faulty_train.py
fills at a chosen step."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.distributed.conftest import FAULTY_TRAIN, REPO, TINY_JOB, error_line, losses_by_step

JOB = ["train.max_steps=8", "train.checkpoint_every=3", "train.eval_every_epochs=0", "eval.at_end=false", *TINY_JOB]


def faulty_train(run_dir, dataset, *args):
    """The job under dimerec-torchrun, as users launch it (plain torchrun adds its own traceback to a user error)."""
    command = [
        sys.executable,
        "-m",
        "dimerec_dist.commands.torchrun",
        "--standalone",
        "--nproc_per_node=2",
        str(FAULTY_TRAIN),
    ]
    command += ["--run-dir", str(run_dir), *args, "data.source=prepared", f"data.path={dataset}", *JOB]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_full_disk_stops_every_rank_in_one_line_keeps_the_last_checkpoint_and_the_job_resumes(
    tiny_dataset, make_small_disk, tmp_path
):
    run_dir = make_small_disk("runs", 4096) / "run"
    with ThreadPoolExecutor(max_workers=1) as beside:  # the uninterrupted reference, meanwhile
        reference = beside.submit(faulty_train, tmp_path / "reference", tiny_dataset)
        line = error_line(faulty_train(run_dir, tiny_dataset, "--fill-disk-at-step", "4"))
        reference = reference.result()
    assert line.startswith(f"dimerec-train: error: {run_dir}/"), line
    assert "No space left on device" in line and "step-00000003" in line and "free space and launch again" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000003"], "no partial step-6 left"
    (run_dir / "disk-filler").unlink()
    resumed = faulty_train(run_dir, tiny_dataset)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000003" in resumed.stderr and max(losses_by_step(run_dir)) == 8
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert losses_by_step(run_dir) == losses_by_step(tmp_path / "reference"), "resumed exactly"
