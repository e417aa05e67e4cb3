"""One job at a time on a run directory: a second job started on it stops with one line naming the
job that holds it and touches nothing; a killed job's restart takes the run over (issue #50)."""

import os
import signal
import subprocess
import sys
import time

from tests.distributed.conftest import FAULTY_TRAIN, REPO, TINY_JOB, error_line, read_jsonl, torchrun_command

JOB = ["train.max_steps=40", "train.checkpoint_every=2", "train.eval_every_epochs=0", "eval.at_end=false", *TINY_JOB]


def test_a_second_job_on_a_held_run_dir_is_refused_naming_the_holder_and_a_restart_takes_over(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    data = ["data.source=prepared", f"data.path={tiny_dataset}"]
    # Job A: 2 ranks, rank 0 killed at step 3 on the first attempt, torchrun restarts it (the restart must
    # take the run directory over from the killed holder), slowed so that job B meets it running.
    first = torchrun_command(
        2,
        str(FAULTY_TRAIN),
        "--run-dir",
        str(run_dir),
        "--kill-at-step",
        "3",
        "--kill-rank",
        "0",
        "--step-delay",
        "0.4",  # 34 steps after job B starts: room for B's start on a machine busy with other tests
        *data,
        *JOB,
        restarts=1,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job_a = subprocess.Popen(
        first, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the restarted attempt is past its resume
            rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            if len([row for row in rows if "loss/total" in row]) >= 6:
                break
            time.sleep(0.2)
        config_before = (run_dir / "config.yaml").read_bytes()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "dimerec_dist.commands.train",
                "--run-dir",
                str(run_dir),
                *data,
                *JOB,
                "train.max_steps=5",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job_a.poll() is None, "job A was still running when job B started"
        line = error_line(second)
        assert line.startswith(f"dimerec-train: error: --run-dir {run_dir} is in use by dimerec-train (pid "), line
        assert "wait for it to end (or stop it), or pick another --run-dir" in line
        assert (run_dir / "config.yaml").read_bytes() == config_before
        _, stderr = job_a.communicate(timeout=240)
    finally:
        if job_a.poll() is None:
            os.killpg(job_a.pid, signal.SIGKILL)
            job_a.wait()
    assert job_a.returncode == 0, stderr[-3000:]
    assert "resuming from" in stderr or "resumed from" in stderr or "step-00000002" in stderr
    steps = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl") if "loss/total" in row]
    assert max(steps) == 40 and steps[-1] == 40, "only job A's rows: it ran to its end"
    assert not (run_dir / ".lock").exists(), "a job that ends lets the run directory go"
