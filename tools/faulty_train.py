"""dimerec-train with faults injected through the Trainer's step hooks, for the restart tests,
the fault drill and the resume plot. Never used by a real job.

    torchrun --nproc_per_node=2 --max-restarts=1 tools/faulty_train.py --kill-at-step 25 --kill-rank 1 \\
        --run-dir runs/x key=value ...
    torchrun ... tools/faulty_train.py --step-delay 0.2 --run-dir runs/x ...   # time to signal a run

--kill-at-step SIGKILLs the chosen rank at the top of that step, on torchrun's first attempt
only (so the restarted job runs through); --step-delay sleeps at the top of every step.
--config, --run-dir and the key=value overrides are dimerec-train's.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from dimerec_dist.trainer import train_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-rank", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds")
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
    return train_command(args.config, args.overrides, args.run_dir, before_step=hooks)


if __name__ == "__main__":
    from dimerec_dist.process_exit import exit_process

    exit_process(main())
