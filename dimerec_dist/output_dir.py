"""Output directories that are never overwritten by accident and never left half old, half new.

A command that writes a directory (a prepared dataset, a serving bundle) refuses a target
that already holds something, unless told `--overwrite`. It always writes beside the
target (`.NAME.staging`), and only when that is complete swaps it in:

    target -> .NAME.old      (only with --overwrite)
    staging -> target
    remove .NAME.old

A process killed between those renames leaves the old output whole in `.NAME.old` and the
new one whole in staging; `recover` puts the old one back the next time, so a reader sees
either the old output or the new one, never a mix of their files.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

log = logging.getLogger("dimerec.output")


class OutputError(ValueError):
    """An output location that cannot be used: it holds something (and --overwrite was not
    given), it is a file, or it cannot be written."""


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.staging")


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover(target: Path) -> None:
    """Undo a swap that was killed half-way: the old output goes back where it was."""
    old = _old_path(target)
    if old.exists() and not target.exists():
        old.rename(target)
        log.warning("restored %s from an interrupted overwrite", target)


def check_target(target: Path, overwrite: bool, what: str, flag: str = "--overwrite") -> None:
    """Refuse a target that is a file, or a non-empty directory unless `overwrite`."""
    recover(target)
    writable_dir(target.parent, "the output's parent directory")
    if target.is_file() or target.is_symlink() and not target.is_dir():
        raise OutputError(f"{target} is a file, not a directory; pick another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(
            f"{target} exists and is not empty; {what} is never overwritten "
            f"(pass {flag} to replace it, or pick another output path)"
        )


def begin(target: Path) -> Path:
    """A fresh, empty staging directory beside `target` (a staging left by a killed run is removed)."""
    staging = staging_path(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, target: Path) -> None:
    """Swap the complete `staging` in as `target`, replacing what was there."""
    old = _old_path(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def os_error_line(exc: OSError) -> str:
    """'/x/y: Permission denied' - the path and the OS's reason, on one line."""
    where = exc.filename or "?"
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and prove a file can be written in it, before any work is done,
    so a read-only or mistyped location is a one-line error at start, not a traceback at the
    first save. Raises OutputError naming `what` (e.g. '--run-dir') and the OS's reason."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    return path
