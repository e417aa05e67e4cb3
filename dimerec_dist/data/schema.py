"""The prepared-dataset format: manifest.json, items.parquet and the split shards.

Written by `dimerec-prepare`, read by the trainer. docs/DATA.md describes it for people;
this file is the one place that describes it for code. Readers check what they load
(schema, checksums, id ranges) and name the file and row of anything wrong.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dimerec_dist.config import DATA_SPLITS
from dimerec_dist.runtime.integrity import file_sha256

SCHEMA_VERSION = 1
PADDING_ID = 0  # item id 0 is never a real item: it pads histories

ITEMS_SCHEMA = pa.schema([("item_id", pa.int64()), ("raw_id", pa.string()), ("popularity", pa.int64())])
TRAIN_SCHEMA = pa.schema([("user", pa.int64()), ("raw_user", pa.string()), ("items", pa.list_(pa.int64()))])
EVAL_SCHEMA = pa.schema([("user", pa.int64()), ("history", pa.list_(pa.int64())), ("target", pa.int64())])
# ComiRec's user-split protocol: held-out users, the first 80% of their history in, the rest as targets.
USER_SPLIT_EVAL_SCHEMA = pa.schema(
    [("user", pa.int64()), ("history", pa.list_(pa.int64())), ("targets", pa.list_(pa.int64()))]
)
SPLITS = DATA_SPLITS


def split_schema(protocol: str, split: str) -> pa.Schema:
    if split == "train":
        return TRAIN_SCHEMA
    return USER_SPLIT_EVAL_SCHEMA if protocol == "user" else EVAL_SCHEMA


class DataError(ValueError):
    """Input data that cannot be used: the message names the file and, where known, the row or line."""


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def num_items(self) -> int:
        """Real items; the table has num_items + 1 rows (row 0 is padding)."""
        return int(self.data["counts"]["items"])

    @property
    def num_users(self) -> int:
        return int(self.data["counts"]["users"])

    def _check_listing(self, path: Path) -> None:
        """Every shard listed once, no copies, no unlisted shard: a plan must never read a row twice or miss one."""
        problems = _listing_problems(self.root, self.data)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(f"{path}: {problems[0]}{more}")

    @functools.cached_property
    def identity(self) -> str:
        """The dataset's content in one SHA-256: its manifest lists every file's checksum, the counts
        and the options it was prepared with, so two datasets share it only if they hold the same data."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()

    @property
    def protocol(self) -> str:
        """How valid and test were held out: leave-one-out (default) or user (ComiRec's user split)."""
        return self.data.get("options", {}).get("split", "leave-one-out")

    def split_files(self, split: str) -> list[Path]:
        if split not in self.data["files"]:
            raise DataError(f"{self.root / 'manifest.json'}: no split {split!r} (has {sorted(self.data['files'])})")
        return [self.root / entry["path"] for entry in self.data["files"][split]]

    @staticmethod
    def load(root: str | Path, verify_checksums: bool = True) -> Manifest:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise DataError(f"{path} does not exist: run dimerec-prepare first, or check data.path")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{path}: schema_version {version!r}, this build reads {SCHEMA_VERSION}")
        manifest = Manifest(root, data)
        manifest._check_listing(path)
        for split, entries in [("items", [data["items"]])] + list(data["files"].items()):
            for entry in entries:
                file = root / entry["path"]
                if not file.is_file():
                    raise DataError(f"{path}: {split} file {entry['path']} is listed but missing")
                if verify_checksums and file_sha256(file) != entry["sha256"]:
                    raise DataError(f"{file}: checksum differs from {path} (file changed or truncated)")
        return manifest


def _listing_problems(root: Path, data: dict[str, Any]) -> list[str]:
    problems = []
    listed: dict[str, str] = {}
    checksums: dict[str, str] = {}
    for split, entries in data["files"].items():
        for entry in entries:
            if entry["path"] in listed:
                problems.append(f"shard {entry['path']} is listed twice ({listed[entry['path']]} and {split})")
            elif entry["sha256"] in checksums and entry["rows"]:
                problems.append(
                    f"shards {checksums[entry['sha256']]} and {entry['path']} are duplicates (same checksum)"
                )
            listed[entry["path"]] = split
            checksums.setdefault(entry["sha256"], entry["path"])
        folder = root / split
        if folder.is_dir():
            for file in sorted(folder.glob("*.parquet")):
                relative = f"{split}/{file.name}"
                if relative not in listed:
                    problems.append(f"{relative} is in the dataset but not listed in the manifest")
    return problems


def write_parquet(table: pa.Table, root: Path, relative: str, row_group_size: int) -> dict[str, Any]:
    """Write one shard and return its manifest entry (path relative to the dataset root)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return {"path": relative, "rows": table.num_rows, "sha256": file_sha256(path)}


def read_split(manifest: Manifest, split: str) -> pa.Table:
    """All shards of a split, schema- and range-checked."""
    expected = split_schema(manifest.protocol, split)
    tables = []
    for file in manifest.split_files(split):
        try:
            table = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read Parquet ({exc})") from None
        if not table.schema.equals(expected, check_metadata=False):
            raise DataError(
                f"{file}: schema {table.schema.to_string(show_schema_metadata=False)!r} "
                f"is not the {split} schema {expected.to_string()!r}".replace("\n", "; ")
            )
        check_item_ids(table, manifest.num_items, file)
        tables.append(table)
    return pa.concat_tables(tables) if tables else expected.empty_table()


def check_item_ids(table: pa.Table, num_items: int, file: Path) -> None:
    """Every item id must be a real item: 1..num_items, never null."""
    for column in ("items", "history", "target", "targets"):
        if column not in table.column_names:
            continue
        array = table.column(column).combine_chunks()
        values = array.flatten() if pa.types.is_list(array.type) else array
        if values.null_count or array.null_count:
            row = _first_row(array, lambda a: np.asarray(a.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{file}: null in column {column!r} at row {row}")
        ids = values.to_numpy()
        bad = (ids < 1) | (ids > num_items)
        if bad.any():
            flat_index = int(np.argmax(bad))
            row = _row_of_flat_index(array, flat_index) if pa.types.is_list(array.type) else flat_index
            raise DataError(
                f"{file}: column {column!r} row {row} holds item id {int(ids[flat_index])}, "
                f"outside the manifest's 1..{num_items}"
            )
        if pa.types.is_list(array.type):
            lengths = np.asarray(array.value_lengths().to_numpy(zero_copy_only=False))
            if (lengths == 0).any():
                raise DataError(f"{file}: column {column!r} row {int(np.argmax(lengths == 0))} is an empty list")


def _first_row(array: pa.Array, is_null: Callable[[pa.Array], np.ndarray]) -> int:
    mask = is_null(array)
    if mask.any():
        return int(np.argmax(mask))
    flat_index = int(np.argmax(is_null(array.flatten())))
    return _row_of_flat_index(array, flat_index)


def _row_of_flat_index(array: pa.ListArray, flat_index: int) -> int:
    offsets = np.asarray(array.offsets.to_numpy())
    return int(np.searchsorted(offsets, flat_index, side="right") - 1)


def read_items(manifest: Manifest) -> pa.Table:
    return pq.read_table(manifest.root / manifest.data["items"]["path"])


def padded_popularity(items: pa.Table) -> np.ndarray:
    """Training count of every dense item id from items.parquet, index 0 (padding) 0."""
    return np.concatenate([[0], items.column("popularity").to_numpy()]).astype(np.int64)
