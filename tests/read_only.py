"""A directory nobody may write to, root included (tests and the fault drill run as root in CI):
a read-only bind mount where mounting is allowed, else the immutable attribute, else plain
permissions (enough for an unprivileged user)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class ReadOnlyUnavailable(RuntimeError):
    """None of the ways works on this machine."""


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[str]:
    """Make `path` read-only for the block; the value says how it was done."""
    if os.geteuid() != 0:
        attempts = [(["chmod", "555", str(path)], ["chmod", "755", str(path)], "mode 555")]
    else:
        attempts = [
            (["mount", "--bind", "-o", "ro", str(path), str(path)], ["umount", str(path)], "read-only bind mount"),
            (["chattr", "+i", str(path)], ["chattr", "-i", str(path)], "immutable attribute"),
        ]
    for command, undo, how in attempts:
        if subprocess.run(command, capture_output=True).returncode == 0:
            try:
                yield how
            finally:
                subprocess.run(undo, capture_output=True)
            return
    raise ReadOnlyUnavailable(f"cannot make {path} read-only here (no mount, chattr or unprivileged user)")
