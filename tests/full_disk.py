"""A directory on a disk that is nearly full: a small tmpfs mounted for the test (tests run as
root in CI, as the read-only cases do), so a write past it fails with the real ENOSPC."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


class FullDiskUnavailable(RuntimeError):
    """Mounting is not allowed on this machine."""


@contextlib.contextmanager
def small_disk(path: Path, size_kib: int) -> Iterator[Path]:
    """`path` as a tmpfs of `size_kib` KiB for the block."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        raise FullDiskUnavailable(f"cannot mount a small tmpfs at {path}: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
