"""Helpers for tests that launch real torchrun jobs (gloo, CPU)."""

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(nproc: int, *target: str, restarts: int = 0) -> list[str]:
    """torchrun on loopback with `nproc` workers running `target` (`-m MODULE ...` or `SCRIPT ...`).
    One rank with no restarts to make is a plain process, as `dimerec-train` runs without torchrun:
    the same job (a one-rank group), without the agent's start (~2 s a job)."""
    if nproc == 1 and not restarts:
        return [sys.executable, *target]
    standalone = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*standalone, *([f"--max-restarts={restarts}"] if restarts else []), *target]


def torchrun(nproc: int, module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args` under torchrun on loopback (see `torchrun_command`); fail the test
    with the job's output."""
    command = torchrun_command(nproc, "-m", module, *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own, so a job that times out is killed with its workers, not just the agent.
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as job:
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            stdout, stderr = job.communicate()
            pytest.fail(f"{' '.join(command)} timed out after {timeout}s\n{stderr[-6000:]}")
    done = subprocess.CompletedProcess(command, job.returncode, stdout, stderr)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def two_at_a_time(job, items) -> list:
    """`job(item)` for every item, two running at once, results in order. Small jobs are mostly
    imports and process start, which two jobs overlap well on the 2 cores CI has."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(job, items))


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one `dimerec-...: error: ...` line a command ended with (exit code 2, no traceback), or fail
    the test with its output. Several ranks may print the same line: it counts once."""
    lines = {line for line in done.stderr.splitlines() if line.startswith("dimerec-") and ": error: " in line}
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines.pop()


def command_error(module: str, *args: str, timeout: float = 120) -> str:
    """Run `python -m module args` in the repository; its one error line (error_line)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    return error_line(done)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """loss/total by step from metrics.jsonl (a resumed run's rows for the steps it repeats win)."""
    return {row["step"]: row["loss/total"] for row in read_jsonl(run_dir / "metrics.jsonl") if "loss/total" in row}


FAULTY_TRAIN = REPO / "tools" / "faulty_train.py"  # dimerec-train with a kill or a delay in its step hooks


def faulty_train(world: int, run_dir, *args: str, restarts: int = 0) -> subprocess.CompletedProcess:
    """tools/faulty_train.py under torchrun (`restarts` attempts after the first), its output kept."""
    command = torchrun_command(world, str(FAULTY_TRAIN), "--run-dir", str(run_dir), *args, restarts=restarts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


TINY_JOB = [
    "model.embedding_dim=16",
    "model.max_history=20",
    "model.num_interests=2",
    "model.dam_hidden=32",
    "model.diffusion_steps=10",
    "model.dropout=0",
    "train.batch_size=64",
    "train.negatives=128",
    "train.log_every=1",
    "eval.batch_size=64",
    "data.streams=2",
]
