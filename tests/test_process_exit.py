"""exit_process leaves with the command's code after the exit handlers a normal exit runs."""

import subprocess
import sys
from pathlib import Path

from tests.distributed.conftest import REPO

PROGRAM = """
import atexit, sys, tempfile, weakref
from dimerec_dist.runtime.process_exit import exit_process
kept = tempfile.TemporaryDirectory()  # cleaned by a weakref finalizer at exit
print(kept.name)
atexit.register(lambda: print("handler ran"))
sys.stdout.write("unflushed")
exit_process(3)
"""


def test_exit_handlers_run_stdio_is_flushed_and_the_code_is_kept():
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    temporary, rest = done.stdout.split("\n", 1)
    assert "unflushed" in rest and "handler ran" in rest
    assert not Path(temporary).exists(), "weakref finalizers ran: the temporary directory is gone"
