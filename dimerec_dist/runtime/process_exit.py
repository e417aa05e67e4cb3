"""Leaving a process that loaded torch and TorchRec without the interpreter's teardown.

Python's finalization of TorchRec's module graph (tensordict, torch._dynamo, sympy, ...) is a
pause that frees nothing the OS would not, and a torchrun job pays it in every rank. The
commands torchrun runs end through `exit_process`: the exit handlers run as in a normal exit
(atexit: logging, weakref finalizers such as temporary directories, coverage's data file),
stdio is flushed, and the process leaves with its code.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    atexit._run_exitfuncs()  # what a normal exit runs, in the same (reverse) order
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
