"""An exclusive lock on a path, held by one process at a time, that dies with its holder.

`flock` rather than a pid file: the kernel releases it when the holder's process ends, however
it ends (SIGKILL, OOM, a node reboot of a local disk), so a killed job's restart takes it over
with nothing to clean up and no guessing whether a pid is still the same process. The file
names its holder, so the process that is refused can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path


class LockHeld(RuntimeError):
    """The lock is held by another process; `holder` is what that process wrote in it."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def this_process(command: str | None = None) -> str:
    """'dimerec-train (pid 42 on host-a, since 2026-12-06 23:50:01)': how a holder is named."""
    name = command or Path(sys.argv[0]).name or "python"
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"{name} (pid {os.getpid()} on {socket.gethostname()}, since {since})"


class FileLock:
    def __init__(self, path: Path, holder: str | None = None):
        self.path, self.holder = Path(path), holder or this_process()
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        """Take the lock now or raise LockHeld: a second job is refused, never queued."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                os.close(fd)
                raise LockHeld(self.path, holder or "another process") from None
            # The last holder removes the file as it lets go: a lock taken on a file already unlinked
            # would hold nothing. Taken again on the path's current file.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.holder.encode() + b"\n", 0)
        except OSError:  # a full disk: nothing held, nothing left behind
            self.release()
            raise
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: no one can have taken this file meanwhile
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
