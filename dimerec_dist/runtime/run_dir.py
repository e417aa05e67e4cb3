"""A run's directory: a local path, or a URI on an object store (s3://..., gs://..., hdfs://...).

On a store, the big things go there directly: checkpoints and the best model through DCP's
fsspec writer (`place`). The small files the trainer writes often (metrics.jsonl, the
TensorBoard event file, config.yaml, final.json, the sharding plan, profiler traces) are
written to a node-local working copy and uploaded when they changed (`sync`): at log steps at
most every SYNC_EVERY_S, and always at checkpoints, validations and the end. A job restarted
on any node takes its working copy from the store again (`pull`), so metrics.jsonl goes on
where the store's ends; what a SIGKILL caught between two syncs is the lost part, and the
steps it covered are trained and logged again from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from dimerec_dist.runtime.file_lock import FileLock, LockHeld, this_process
from dimerec_dist.runtime.output_dir import OutputError, writable_dir
from dimerec_dist.runtime.storage import (
    Location,
    StorageError,
    cache_key,
    cache_root,
    child,
    filesystem,
    get_tree,
    is_remote,
    local_path,
    location,
)

log = logging.getLogger("dimerec.run_dir")
SYNC_EVERY_S = 30.0
ON_STORE_ONLY = ("checkpoints", "model")  # written to the store by DCP, never to the working copy


@dataclass
class RunDir:
    local: Path  # where the run's small files are written: the run directory, or its working copy
    remote: str | None = None  # the run directory on a store, if it is there
    _uploaded: dict[str, tuple[int, int]] | None = None  # name -> (size, mtime) as on the store, once pulled
    _synced_at: float = 0.0
    _lock: FileLock | None = None  # rank 0's hold on the run directory (`hold`)

    @classmethod
    def at(cls, where: str | Path) -> RunDir:
        if not is_remote(where):
            return cls(local_path(where))
        uri = location(where)
        # One working copy per node even where nodes share the cache (NFS, or "nodes" on one machine):
        # each node's first process replaces and uploads its own. torchrun names the node GROUP_RANK.
        node = os.environ.get("GROUP_RANK", "0")
        return cls(cache_root() / "runs" / cache_key(uri) / f"node-{node}", uri)

    @classmethod
    def open(cls, where: str | Path, local_rank: int, rank: int | None = None) -> RunDir:
        """The run directory of a job's processes, held by this job and checked writable. On a store, the
        first process of each node makes the node's working copy (`pull`) and the others wait for it
        before they touch it: a restarted job's pull replaces the copy its last attempt left, under any
        rank writing there."""
        run = cls.at(where)
        run.hold(rank if rank is not None else dist.get_rank() if dist.is_initialized() else 0)
        if run.remote and local_rank == 0:
            run.pull()
        if dist.is_initialized():
            dist.barrier()  # every node's working copy is there
        writable_dir(run.local, "--run-dir")
        return run

    def hold(self, rank: int) -> None:
        """One job at a time: the job's rank 0 takes the run's lock (beside a store's working copy, which
        a pull replaces), and every rank stops with one line naming the job holding it. The lock dies
        with its holder, so a killed job's restart (torchrun's, or a person's) takes it over."""
        refused = None
        if rank == 0:
            # A store's run: beside the run's working copies (cache/runs/KEY.node-N.lock), which pulls replace.
            copies = self.local.parent
            lock = (
                self.local / ".lock" if not self.remote else copies.with_name(f"{copies.name}.{self.local.name}.lock")
            )
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
                self._lock = FileLock(lock, this_process("dimerec-train")).acquire()
            except LockHeld as held:
                refused = (
                    f"--run-dir {self} is in use by {held.holder}; one job writes a run directory at a time: "
                    f"wait for it to end (or stop it), or pick another --run-dir"
                )
            except OSError:
                pass  # a run directory that cannot be written: named by the writability check that follows
        if dist.is_initialized():
            shared = [refused]
            dist.broadcast_object_list(shared, src=0)
            refused = shared[0]
        if refused:
            raise OutputError(refused)

    def release(self) -> None:
        """Let the next job have the run directory (a process that ends lets go anyway)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __str__(self) -> str:
        return self.remote or str(self.local)

    def place(self, name: str) -> Location:
        """Where the run's `name` directory (checkpoints, model) is: on the store for a remote run."""
        return child(self.remote, name) if self.remote else self.local / name

    def pull(self) -> None:
        """A fresh working copy of the store's run files (not its checkpoints or model): what an
        earlier job of this run left there. Called by one process per node."""
        if not self.remote:
            return
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        try:
            fs, root = filesystem(self.remote)
            fs.invalidate_cache(root)
            taken = 0  # a new run: nothing there yet (or no bucket: found when its first file is written)
            if fs.exists(root):
                taken = get_tree(fs, root, self.local, keep=lambda name: name.split("/")[0] not in ON_STORE_ONLY)
        except (OSError, StorageError) as exc:
            raise OutputError(f"--run-dir {self.remote}: cannot be read ({exc})") from None
        self._uploaded = self._stamps()
        log.info("run directory %s: working copy in %s (%d files from the store)", self, self.local, taken)

    def fetch(self, name: str) -> Path:
        """One file of the run from the store into the working copy (whole, or not at all: any number
        of processes may fetch it at once), for the commands that read a finished run."""
        target = self.local / name
        if not self.remote:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            fs, root = filesystem(self.remote)
            fs.get_file(f"{root}/{name}", str(partial))
        except FileNotFoundError:
            return target  # the caller names what is missing
        except (OSError, StorageError) as exc:
            raise OutputError(f"{self.remote}/{name}: cannot be read ({exc})") from None
        partial.replace(target)
        return target

    def upload(self, name: str) -> None:
        """One file of the working copy to the store (what a command reading a finished run wrote)."""
        if self.remote:
            try:
                fs, root = filesystem(self.remote)
                fs.put_file(str(self.local / name), f"{root}/{name}")
            except (OSError, StorageError) as exc:
                raise OutputError(f"{self.remote}/{name}: cannot be written ({exc})") from None

    def due(self, force: bool = False) -> bool:
        """Whether `sync` would upload now: in the process that pulled the working copy (one per node:
        it owns it), every SYNC_EVERY_S, or at once if `force`."""
        return self._uploaded is not None and (force or time.monotonic() - self._synced_at >= SYNC_EVERY_S)

    def sync(self) -> None:
        """Upload the working copy's new and changed files (in the process that pulled it)."""
        if self._uploaded is None:
            return
        stamps = self._stamps()
        changed = sorted(name for name, stamp in stamps.items() if self._uploaded.get(name) != stamp)
        try:
            fs, root = filesystem(self.remote)
            for name in changed:
                fs.put_file(str(self.local / name), f"{root}/{name}")
        except (OSError, StorageError) as exc:
            raise OutputError(f"--run-dir {self.remote}: cannot be written ({exc})") from None
        self._uploaded.update((name, stamps[name]) for name in changed)
        self._synced_at = time.monotonic()

    def _stamps(self) -> dict[str, tuple[int, int]]:
        stamps = {}
        for path in self.local.rglob("*"):
            name = path.relative_to(self.local)
            if path.is_file() and not any(part.startswith(".") for part in name.parts):  # not what is being made
                stat = path.stat()
                stamps[name.as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return stamps
