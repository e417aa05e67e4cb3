"""Checksums: of files (memory-mapped, several at once) and of JSON metadata that lists them.

Every directory the product writes for later (a prepared dataset, a checkpoint, a model,
a serving bundle) lists its files' SHA-256 in its metadata, and the metadata carries a
digest of itself; readers verify before they use anything, so a flipped byte or a
truncated file is an error naming the file, never a silent wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from dimerec_dist.runtime import storage
from dimerec_dist.runtime.storage import Location, child, is_remote

BLOCK = 1 << 24  # hashlib releases the GIL on blocks this large: threads hash files in parallel


def file_sha256(path: Location) -> str:
    if is_remote(path):
        return storage.read_stream(path, _streamed_sha256)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return digest.hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            for start in range(0, size, BLOCK):
                digest.update(view[start : start + BLOCK])
            view.release()
    return digest.hexdigest()


def _streamed_sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := handle.read(BLOCK):
        digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: Iterable[Location], threads: int = 0) -> list[str]:
    """Digests of `paths`, in order, hashed `threads` at a time (0: one per core, at most 8)."""
    paths = list(paths)
    threads = threads or min(8, os.cpu_count() or 1)
    if threads == 1 or len(paths) <= 1:
        return [file_sha256(path) for path in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(file_sha256, paths))


def mismatches(root: Location, expected: dict[str, str], threads: int = 0) -> list[str]:
    """What is wrong with the files under `root` (a directory, or a URI's) that `expected` lists
    ({relative name: sha256})."""
    names = sorted(expected)
    present = [name for name in names if storage.is_file(child(root, name))]
    problems = [f"{child(root, name)} is missing" for name in names if name not in present]
    for name, digest in zip(present, files_sha256([child(root, name) for name in present], threads)):
        if digest != expected[name]:
            problems.append(
                f"{child(root, name)} does not match its checksum (truncated or changed after it was written)"
            )
    return problems


def digest_of(meta: dict[str, Any], key: str) -> str:
    """SHA-256 of the canonical JSON of `meta` without `key` (where the digest itself is kept)."""
    body = {name: value for name, value in meta.items() if name != key}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sealed(meta: dict[str, Any], key: str) -> dict[str, Any]:
    return {**meta, key: digest_of(meta, key)}


def seal_problem(meta: dict[str, Any], key: str, where: Path) -> str | None:
    """Why `meta` read from `where` is not what was written (None if its digest matches, or it has none:
    written before digests existed)."""
    if key in meta and meta[key] != digest_of(meta, key):
        return f"{where} does not match its own digest (edited or corrupted)"
    return None
