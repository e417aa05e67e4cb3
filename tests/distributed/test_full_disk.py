"""A disk that fills during training: the save that meets it is one line naming the checkpoint
and the newest whole one, its partial files are removed, and once space is freed the job
launched again resumes from that checkpoint (issue #50). Real ENOSPC: the run directory is a
small tmpfs that tools/faulty_train.py fills at a chosen step."""

import subprocess
import sys

from tests.distributed.conftest import FAULTY_TRAIN, REPO, TINY_JOB, error_line, losses_by_step

JOB = ["train.max_steps=8", "train.checkpoint_every=3", "train.eval_every_epochs=0", "eval.at_end=false", *TINY_JOB]


def faulty_train_here(run_dir, dataset, *args):
    """tools/faulty_train.py in this process's Python, one rank (the smallest case of the same path)."""
    command = [sys.executable, str(FAULTY_TRAIN), "--run-dir", str(run_dir), *args]
    command += ["data.source=prepared", f"data.path={dataset}", *JOB]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_save_on_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_the_job_resumes(
    tiny_dataset, make_small_disk, tmp_path
):
    run_dir = make_small_disk("runs", 4096) / "run"
    done = faulty_train_here(run_dir, tiny_dataset, "--fill-disk-at-step", "4")
    assert error_line(done) == (
        f"dimerec-train: error: {run_dir}/checkpoints/step-00000006 could not be written (rank 0: No space "
        "left on device); the newest whole one, step-00000003, is intact; free space and launch again "
        "(resume=auto continues)"
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000003"], "no partial step-6 left"
    (run_dir / "disk-filler").unlink()
    resumed = faulty_train_here(run_dir, tiny_dataset)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000003" in resumed.stderr and max(losses_by_step(run_dir)) == 8
    reference = faulty_train_here(tmp_path / "reference", tiny_dataset)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert losses_by_step(run_dir) == losses_by_step(tmp_path / "reference"), "resumed exactly"
