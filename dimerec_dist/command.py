"""How a command ends: a user error (bad config, data, checkpoint, output place) is one
line on stderr and exit code 2; a job stopped by a signal after its checkpoint exits 143
(0 under dimerec-torchrun, which exits 143 itself); anything else is a bug and raises."""

from __future__ import annotations

import sys
from collections.abc import Callable

from dimerec_dist.distributed.process_group import DeviceUnavailable, shutdown
from dimerec_dist.launcher import report_requested_stop
from dimerec_dist.output_dir import os_error_line

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped by a signal after saving a checkpoint


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
