"""dimerec-torchrun: torchrun, with a stop that means stop.

    dimerec-torchrun --standalone --nproc_per_node=2 -m dimerec_dist.commands.train --run-dir runs/x
    (any torchrun arguments; launch/*.sh call it)

Plain torchrun treats a preemption as a failure: SIGTERM to one worker makes that worker
save and exit, and the agent restarts the job (with --max-restarts), which goes on; SIGTERM
to the agent ends it with a traceback and exit code 1. Under this launcher a requested
stop ends the job once, with exit code 143 (128 + SIGTERM), whoever got the signal:

- the agent (this process): torchrun forwards the signal to the workers and waits for
  them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 600 s by default here, not torchrun's 30, so a
  large table finishes its checkpoint); this launcher then exits 128 + the signal.
- a worker: the trainer stops every rank at the same step, saves once, and (told by
  DIMEREC_STOP_FILE that this launcher runs it) exits 0 after leaving the file, so the
  agent sees a finished job and restarts nothing; this launcher sees the file and exits 143.

A job whose workers all stop on a user error (a bad config, data set or checkpoint: one
line each on stderr, exit code 2) ends with 2, without torchrun's traceback; torchrun still
retries it under --max-restarts, where it fails again at once. A worker that fails for any
other reason is torchrun's business as before: restarts, its failure table, exit code 1.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from dimerec_dist.runtime.command import PREEMPTED_EXIT_CODE as STOPPED_EXIT_CODE
from dimerec_dist.runtime.command import STOP_FILE_ENV

USER_ERROR_EXIT_CODE = 2  # the commands' exit code for a bad config, data set or checkpoint
SHUTDOWN_TIMEOUT_S = "600"

log = logging.getLogger("dimerec.launcher")


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="dimerec-launch-") as scratch:
        stop_file = Path(scratch) / "stopped"
        os.environ[STOP_FILE_ENV] = str(stop_file)  # the workers inherit it
        try:
            torchrun(sys.argv[1:] if argv is None else argv)
        except SignalException as exc:
            log.warning("stopped by %s: the workers saved a checkpoint and ended", exc.sigval.name)
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            _, first = exc.get_first_failure()  # the others were stopped by torchrun because of it
            if first.exitcode == USER_ERROR_EXIT_CODE:
                return USER_ERROR_EXIT_CODE  # bad config, data or checkpoint: the worker said why, in one line
            raise
        if stop_file.exists():
            log.warning(
                "stopped on request (%s): the workers saved a checkpoint and ended",
                stop_file.read_text().strip() or "a signal",
            )
            return STOPPED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
