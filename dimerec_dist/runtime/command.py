"""How a command ends: a user error (bad config, data, checkpoint, output place) is one
line on stderr and exit code 2; a job stopped by a signal after its checkpoint exits 143
(0 under dimerec-torchrun, which exits 143 itself); anything else is a bug and raises."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from dimerec_dist.runtime.output_dir import os_error_line
from dimerec_dist.runtime.process_group import DeviceUnavailable, shutdown

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped by a signal after saving a checkpoint
STOP_FILE_ENV = "DIMEREC_STOP_FILE"  # set by dimerec-torchrun: where a worker that stopped on request says so


def run_command(name: str, job: Callable[[], object], user_errors: tuple[type[Exception], ...]) -> int:
    """Run a command's job, leave the process group, and return its exit code (see above)."""
    try:
        result = job()
    except (*user_errors, DeviceUnavailable, OSError) as exc:  # OSError: a full or read-only disk, named
        message = os_error_line(exc) if isinstance(exc, OSError) and exc.strerror else exc
        sys.stderr.write(f"{name}: error: {message}\n")  # one write: the ranks' lines never interleave
        sys.stderr.flush()
        shutdown(wait_for_peers=False)
        return 2
    shutdown()
    if not (isinstance(result, dict) and result.get("preempted")):
        return 0
    # Under dimerec-torchrun, a clean exit keeps torchrun from restarting a job that was asked to
    # stop; the launcher itself then ends with 143.
    return 0 if report_requested_stop("a signal reached the job") else PREEMPTED_EXIT_CODE


def report_requested_stop(reason: str) -> bool:
    """Called by a worker that stopped on request, after its checkpoint: leave the launcher's
    file and say whether it runs us (then the worker should exit 0, so no restart follows)."""
    path = os.environ.get(STOP_FILE_ENV)
    if not path:
        return False
    Path(path).write_text(reason + "\n")
    return True
