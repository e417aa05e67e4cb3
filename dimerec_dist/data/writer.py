"""Writes one split as rolling Parquet shards with row groups of a fixed number of users.

Rows arrive in pieces of any size; the writer cuts exact row groups (the unit the data
plan hands to ranks), rolls to a new shard file every `rows_per_shard` rows, and
returns manifest entries with each file's checksum and each row group's row and
training-sample counts, so a plan can be made without opening a file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dimerec_dist.runtime.integrity import file_sha256


def group_counts(table: pa.Table) -> dict[str, int]:
    """Rows, and for a train row group its samples (one per item after a user's first) and
    trainable users (>= 2 items: what one random cut per user yields)."""
    counts = {"rows": table.num_rows}
    if "items" in table.column_names:
        lengths = table.column("items").combine_chunks().value_lengths().to_numpy()
        counts.update(samples=int(np.maximum(lengths - 1, 0).sum()), trainable=int((lengths >= 2).sum()))
    return counts


class SplitWriter:
    def __init__(self, root: Path, split: str, schema: pa.Schema, row_group_size: int, rows_per_shard: int):
        self.root, self.split, self.schema = root, split, schema
        self.row_group_size = row_group_size
        self.rows_per_shard = max(rows_per_shard // row_group_size, 1) * row_group_size
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._groups: list[dict] = []
        self.entries: list[dict] = []

    def _relative(self) -> str:
        return f"{self.split}/part-{len(self.entries):05d}.parquet"

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_size:
            self._flush_group(self.row_group_size)

    def _flush_group(self, rows: int) -> None:
        merged = pa.concat_tables(self._pending)
        group, rest = merged.slice(0, rows), merged.slice(rows)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self._writer is None:
            (self.root / self.split).mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.root / self._relative(), self.schema, compression="zstd")
        group = group.combine_chunks()
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._groups.append(group_counts(group))
        self._file_rows += group.num_rows
        if self._file_rows >= self.rows_per_shard:
            self._close_file()

    def _close_file(self) -> None:
        self._writer.close()
        relative = self._relative()
        self.entries.append(
            {
                "path": relative,
                "rows": self._file_rows,
                "sha256": file_sha256(self.root / relative),
                "row_groups": self._groups,
            }
        )
        self._writer, self._file_rows, self._groups = None, 0, []

    def close(self) -> list[dict]:
        if self._pending_rows:
            self._flush_group(self._pending_rows)
        if self._writer is not None:
            self._close_file()
        if not self.entries:  # an empty split still gets one (empty) file, so readers find its schema
            (self.root / self.split).mkdir(parents=True, exist_ok=True)
            relative = self._relative()
            pq.write_table(self.schema.empty_table(), self.root / relative)
            self.entries.append(
                {"path": relative, "rows": 0, "sha256": file_sha256(self.root / relative), "row_groups": []}
            )
        return self.entries
