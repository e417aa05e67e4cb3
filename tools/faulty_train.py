"""dimerec-train with faults injected through the Trainer's step hooks, for the restart tests,
the fault drill and the resume plot. Never used by a real job.

    torchrun --nproc_per_node=2 --max-restarts=1 tools/faulty_train.py --kill-at-step 25 --kill-rank 1 \\
        --run-dir runs/x key=value ...
    torchrun ... tools/faulty_train.py --step-delay 0.2 --run-dir runs/x ...   # time to signal a run

--kill-at-step SIGKILLs the chosen rank at the top of that step, on torchrun's first attempt
only (so the restarted job runs through); --step-delay sleeps at the top of every step;
--fill-disk-at-step has rank 0 fill the run directory's disk (a file of zeros written until
the disk refuses more) at the top of that step, so the next save meets a full disk;
--clock-ahead RANK:SECONDS has that rank's training clock read SECONDS ahead from the first
step on, as a rank that started its clock earlier than its peers would (train.max_minutes).
--config, --run-dir and the key=value overrides are dimerec-train's.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import dimerec_dist.training.trainer as trainer_module
from dimerec_dist.training.trainer import train_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-rank", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--fill-disk-at-step", type=int, default=None)
    parser.add_argument("--clock-ahead", type=rank_and_seconds, default=None, metavar="RANK:SECONDS")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--run-dir", required=True, help="a directory, or a URI (s3://...)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    hooks = []
    if args.step_delay:
        hooks.append(lambda trainer: time.sleep(args.step_delay))
    if args.kill_at_step is not None and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":

        def kill(trainer) -> None:
            if trainer.state.step == args.kill_at_step and trainer.ctx.rank == args.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)

        hooks.append(kill)
    if args.fill_disk_at_step is not None:

        def fill_disk(trainer) -> None:
            if trainer.state.step == args.fill_disk_at_step and trainer.ctx.rank == 0:
                fill(Path(args.run_dir) / "disk-filler")

        hooks.append(fill_disk)
    if args.clock_ahead is not None:
        rank, seconds = args.clock_ahead

        def clock_ahead(trainer) -> None:
            if trainer.ctx.rank == rank and not isinstance(trainer_module.time, ClockAhead):
                trainer_module.time = ClockAhead(seconds)

        hooks.append(clock_ahead)
    return train_command(args.config, args.overrides, args.run_dir, before_step=hooks)


def rank_and_seconds(text: str) -> tuple[int, float]:
    rank, _, seconds = text.partition(":")
    return int(rank), float(seconds)


class ClockAhead:
    """The trainer's `time` module with monotonic() a fixed number of seconds ahead."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.seconds

    def __getattr__(self, name: str):
        return getattr(time, name)


def fill(path: Path) -> None:
    """Write zeros to `path` until the disk is full (ENOSPC), and keep the file."""
    block = bytes(1 << 16)
    with open(path, "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(block)
        except OSError:
            pass
    while True:  # the last partial block's page: fill it byte by byte
        try:
            with open(path, "ab", buffering=0) as filler:
                filler.write(b"\0" * 512)
        except OSError:
            return


if __name__ == "__main__":
    from dimerec_dist.runtime.process_exit import exit_process

    exit_process(main())
