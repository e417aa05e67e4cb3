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

`--overwrite` replaces only an output of the same kind, known by its marker file (a dataset's
manifest.json, a bundle's bundle.json): a run directory, a dataset or a folder of anything
else at `--out` is refused by name. One process at a time writes a target (`claim`, a lock
beside it): of two commands started on one new `--out`, one writes it and the other says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

from dimerec_dist.runtime.file_lock import FileLock, LockHeld, this_process
from dimerec_dist.runtime.storage import is_remote, write_bytes

log = logging.getLogger("dimerec.output")


class OutputError(ValueError):
    """An output location that cannot be used: it holds something (and --overwrite was not
    given), it is a file, or it cannot be written."""


# What a directory is, by the file that marks it; the first that matches names it.
KINDS = (
    ("manifest.json", "a prepared dataset"),
    ("bundle.json", "a serving bundle"),
    ("synth.json", "a synthetic log (dimerec-synth)"),
    ("config.yaml", "a run directory"),
    ("checkpoints", "a run directory"),
    ("metrics.jsonl", "a run directory"),
)


def kind_of(path: Path) -> str:
    """'a run directory (it holds config.yaml)', or 'a directory of other files'."""
    for marker, kind in KINDS:
        if (path / marker).exists():
            return f"{kind} (it holds {marker})"
    return "a directory of other files"


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


def check_target(target: Path, overwrite: bool, what: str, marker: str, flag: str = "--overwrite") -> None:
    """Refuse a target that is a file, or a non-empty directory unless `overwrite` and it is
    `what` already (it holds `marker`)."""
    recover(target)
    writable_dir(target.parent, "the output's parent directory")
    if target.is_file() or target.is_symlink() and not target.is_dir():
        raise OutputError(f"{target} is a file, not a directory; pick another output path")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise OutputError(
            f"{target} exists and is not empty; {what} is never overwritten "
            f"(pass {flag} to replace it, or pick another output path)"
        )
    if not (target / marker).is_file():
        raise OutputError(
            f"{target} is {kind_of(target)}, not {what}: {flag} replaces only {what}; pick another output path"
        )


def claim(target: Path, command: str) -> FileLock:
    """Hold `target` for this process while it writes it (release it when done): a second command
    writing the same target is refused, naming the one that holds it."""
    writable_dir(target.parent, "the output's parent directory")
    try:
        return FileLock(target.with_name(f".{target.name}.lock"), this_process(command)).acquire()
    except LockHeld as held:
        raise OutputError(
            f"{target} is being written by {held.holder}; wait for it to end or pick another output path"
        ) from None


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


def os_error_line(exc: OSError, writing: str | Path | None = None) -> str:
    """'/x/y: Permission denied' - the path and the OS's reason, on one line. Arrow's write errors
    name no file: then `writing`, the output being written, is named."""
    where = exc.filename or (f"writing {writing}" if writing else "?")
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


def on_every_rank(ctx, step, main_only: bool = False) -> list:
    """Run `step` (on the main rank only, if `main_only`) and gather its values from every rank. If it
    failed anywhere on a disk, every rank raises that rank's one-line error: none is left waiting in a
    collective for a peer that is gone."""
    import torch.distributed as dist  # here: the data commands use this module without torch

    value, error = None, None
    try:
        if ctx.is_main or not main_only:
            value = step()
    except OSError as exc:  # a full or read-only disk: where, and what the OS said
        error = os_error_line(exc)
    except OutputError as exc:
        error = str(exc)
    gathered: list[tuple] = [None] * ctx.world_size
    dist.all_gather_object(gathered, (value, error))
    errors = [error for _, error in gathered if error]
    if errors:
        raise OutputError(errors[0])
    return [value for value, _ in gathered]


def write_output(where: str | Path, data: bytes) -> None:
    """One whole file at a path (`write_whole`) or at a URI (one put: atomic on an object store)."""
    if is_remote(where):
        write_bytes(str(where), data)
    else:
        write_whole(Path(where), lambda handle: handle.write(data))


def write_whole(path: Path, write) -> None:
    """`write(handle)` into a file beside `path`, renamed over it only once complete: a full disk
    leaves `path` as it was (or absent), never a truncated file. OSError names `path`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            write(handle)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
