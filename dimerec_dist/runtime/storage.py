"""Paths that may be URIs: s3://, gs://, hdfs://, file://, through fsspec's filesystems.

What the trainer reads many times, or maps into memory, is read from local disk: a remote
directory is copied once into a local cache and used from there (`local_copy`). What a
command writes to a URI is written locally first and then uploaded with the file that
marks it complete last (`upload_dir`), so a reader that trusts only complete outputs (a
dataset with its manifest, a bundle with bundle.json) never sees half of one. Credentials
are the filesystem's own (s3fs reads AWS_*, gcsfs GOOGLE_*); an S3-compatible endpoint (a
MinIO, a test's server) is DIMEREC_S3_ENDPOINT_URL, or AWS_ENDPOINT_URL (`fs_options`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "az://")
T = TypeVar("T")  # what a read_stream consumer makes of a file


class StorageError(RuntimeError):
    """A URI that cannot be read or written: which one, and what the filesystem said."""


def is_remote(path: str | Path) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def local_path(path: str | Path) -> Path:
    """A local path, given as such or as file://."""
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


# A place that is either local or on a store. A URI stays a str: Path would fold its "//".
Location = Path | str


def location(where: str | Path) -> Location:
    return str(where).rstrip("/") if is_remote(where) else local_path(where)


def child(where: Location, name: str) -> Location:
    return f"{where}/{name}" if is_remote(where) else Path(where) / name


def filesystem(uri: str):
    """(fsspec filesystem, path within it) for a URI."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri, **fs_options(uri))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{uri}: no filesystem for it ({exc}); install s3fs / gcsfs as the scheme needs") from None
    return fs, root.rstrip("/")


def fs_options(uri: str) -> dict:
    """An S3-compatible endpoint from the environment (a MinIO, a test's server), if one is set
    (DCP's fsspec writer and reader take these options too)."""
    endpoint = os.environ.get("DIMEREC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if uri.startswith("s3://") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def _remote(where: Location, action: str, call):
    """`call(fs, path)` on a URI, a filesystem error turned into a StorageError naming it."""
    fs, path = filesystem(str(where))
    fs.invalidate_cache(path)  # other processes (ranks, nodes) write there: never trust a cached listing
    try:
        return call(fs, path)
    except FileNotFoundError:
        raise
    except (OSError, PermissionError) as exc:
        raise StorageError(f"{where}: cannot be {action} ({exc})") from None


def is_file(where: Location) -> bool:
    if not is_remote(where):
        return Path(where).is_file()
    return _remote(where, "read", lambda fs, path: fs.isfile(path))


def is_dir(where: Location) -> bool:
    if not is_remote(where):
        return Path(where).is_dir()
    return _remote(where, "read", lambda fs, path: fs.isdir(path))


def read_bytes(where: Location) -> bytes:
    if not is_remote(where):
        return Path(where).read_bytes()
    return _remote(where, "read", lambda fs, path: fs.cat_file(path))


def write_bytes(where: Location, data: bytes) -> None:
    """One file, whole: an object store's put is atomic; a local file is written in place."""
    if not is_remote(where):
        Path(where).write_bytes(data)
        return
    _remote(where, "written", lambda fs, path: fs.pipe_file(path, data))


def remove_tree(where: Location) -> None:
    if not is_remote(where):
        shutil.rmtree(where, ignore_errors=True)
        return

    def remove(fs, path):
        if fs.exists(path):
            fs.rm(path, recursive=True)

    _remote(where, "written", remove)


def matching(where: Location, pattern: str) -> list[str]:
    """Names (relative to `where`, sorted) of what matches the glob `pattern` under it."""
    if not is_remote(where):
        return sorted(p.relative_to(where).as_posix() for p in Path(where).glob(pattern))

    def names(fs, path):
        return sorted(found[len(path) + 1 :] for found in fs.glob(f"{path}/{pattern}"))

    try:
        return _remote(where, "read", names)
    except FileNotFoundError:  # no such place (a missing bucket, too): nothing there, as for a local glob
        return []


def read_stream(uri: str, consume: Callable[[BinaryIO], T]) -> T:
    """`consume(file)` on a remote file opened for reading, streamed rather than read whole."""

    def opened(fs, path):
        with fs.open(path, "rb") as handle:
            return consume(handle)

    return _remote(uri, "read", opened)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except OSError as exc:
        raise StorageError(f"{uri}: cannot be read ({exc})") from None


def cache_key(uri: str) -> str:
    """The name of a URI's local copy: the same on every node, different for every URI."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def local_copy(uri: str, cache_root: Path, marker: str) -> Path:
    """A local copy of the remote directory `uri` under `cache_root`: `marker` (the file that makes
    the directory complete, e.g. manifest.json, which names and checksums the rest) is copied last,
    and a copy whose marker equals the remote one is reused; one replaced since is copied again.
    Processes that copy the same URI at once (two jobs on a machine, the nodes of a job sharing
    the cache) each copy to their own place and publish it by a rename; the first one's stays."""
    target = cache_root / cache_key(uri)
    fs, root = filesystem(uri)
    try:
        try:
            complete = fs.cat_file(f"{root}/{marker}")  # read once: compared, then written last
        except FileNotFoundError:
            raise StorageError(f"{uri}: no {marker} there (not a complete output)") from None
        if _holds(target, marker, complete):
            return target
        of_this_host = f"{target.name}.partial-{socket.gethostname()}-"  # then the copier's pid
        _remove_abandoned(target.parent, of_this_host)
        partial = target.with_name(f"{of_this_host}{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        get_tree(fs, root, partial, keep=lambda name: name != marker)
        (partial / marker).write_bytes(complete)
    except (OSError, PermissionError) as exc:
        raise StorageError(f"{uri}: cannot be read ({exc})") from None
    _publish(partial, target, marker, complete)
    return target


def _holds(copy: Path, marker: str, complete: bytes) -> bool:
    return (copy / marker).is_file() and (copy / marker).read_bytes() == complete


def _remove_abandoned(where: Path, prefix: str) -> None:
    """This host's partial copies whose process has ended (killed while copying)."""
    for partial in where.glob(f"{prefix}*"):
        pid = partial.name[len(prefix) :]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but someone else's
        pass
    return True


def _publish(partial: Path, target: Path, marker: str, complete: bytes) -> None:
    """`partial` renamed to `target`, unless another process published the same copy there first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _holds(target, marker, complete):
            shutil.rmtree(partial)
            return
        shutil.rmtree(target, ignore_errors=True)  # an outdated copy
        try:
            partial.rename(target)
            return
        except OSError:  # a copier beside this one renamed its own there in between: looked at again
            continue
    raise StorageError(f"{target}: the local copy keeps changing under this process (another copying it)")


def get_tree(fs, root: str, local: Path, keep: Callable[[str], bool] = lambda name: True) -> int:
    """Every file under the remote directory `root` whose relative name `keep` accepts, to the same
    place under `local`; how many."""
    names = [name for name in (remote[len(root) + 1 :] for remote in fs.find(root)) if keep(name)]
    for name in names:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{name}", str(local / name))
    return len(names)


def upload_dir(local: Path, uri: str, marker: str) -> None:
    """Every file under `local` to the directory `uri`, `marker` last (what readers check for)."""
    fs, root = filesystem(uri)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.relative_to(local).as_posix() != marker)
    try:
        for file in files:
            fs.put_file(str(file), f"{root}/{file.relative_to(local).as_posix()}")
        if (local / marker).is_file():
            fs.put_file(str(local / marker), f"{root}/{marker}")
    except (OSError, PermissionError) as exc:
        raise StorageError(f"{uri}: cannot be written ({exc})") from None


def download(uri: str, local: Path) -> Path:
    """A remote file, or a directory of files, copied to `local` (for a command's input)."""
    fs, root = filesystem(uri)
    try:
        if fs.isdir(root):
            get_tree(fs, root, local)
            return local
        if not fs.exists(root):
            raise StorageError(f"input {uri} does not exist")
        local.mkdir(parents=True, exist_ok=True)
        target = local / root.rsplit("/", 1)[-1]
        fs.get_file(root, str(target))
        return target
    except (OSError, PermissionError) as exc:
        raise StorageError(f"{uri}: cannot be read ({exc})") from None


def cache_root() -> Path:
    """Where remote datasets are copied on this node: $DIMEREC_CACHE_DIR, or the system's temp dir."""
    return Path(os.environ.get("DIMEREC_CACHE_DIR") or Path(tempfile.gettempdir()) / "dimerec-cache")
