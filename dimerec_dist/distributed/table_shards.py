"""This rank's pieces of the item table, whatever the sharding, and the layouts built from them.

TorchRec hands each rank blocks of rows (row-wise, table-wise), blocks of columns
(column-wise) or a full replica (data-parallel). Initialisation, memory accounting and
evaluation need to see those pieces the same way: as RowShards, views on the live table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel


@dataclass
class RowShard:
    """A block of table rows this rank holds: rows [row_offset, row_offset + rows) x columns."""

    row_offset: int
    col_offset: int
    weight: torch.Tensor  # a live view: writes go to the table


def local_row_shards(model: DistributedModelParallel, table_key_suffix: str) -> list[RowShard]:
    """This rank's pieces of the sharded table named by the state-dict key ending in `table_key_suffix`."""
    state = model.state_dict()
    keys = [k for k in state if k.endswith(table_key_suffix)]
    if len(keys) != 1:
        raise KeyError(f"expected one state-dict key ending in {table_key_suffix!r}, found {keys}")
    value = state[keys[0]]
    if hasattr(value, "local_shards"):
        return [
            RowShard(int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1]), s.tensor)
            for s in value.local_shards()
        ]
    return [RowShard(0, 0, value)]  # data-parallel: a full replica


INIT_BLOCK_ROWS = 4096


@torch.no_grad()
def init_table_deterministically(shards: list[RowShard], total_cols: int, seed: int, scale: float) -> None:
    """Fill the table with U(-scale, scale) values that depend only on (seed, row, column).

    Rows are drawn in fixed global blocks, each from its own generator, so any shard
    layout (1 rank or many, row- or column-wise) initialises the table identically, and
    a rank draws only the blocks that overlap its rows.
    """
    for shard in shards:
        rows, cols = shard.weight.shape
        if rows == 0:
            continue
        first, last = shard.row_offset // INIT_BLOCK_ROWS, (shard.row_offset + rows - 1) // INIT_BLOCK_ROWS
        for block in range(first, last + 1):
            generator = torch.Generator().manual_seed((seed << 32) + block)
            values = (torch.rand(INIT_BLOCK_ROWS, total_cols, generator=generator) * 2 - 1) * scale
            lo = max(block * INIT_BLOCK_ROWS, shard.row_offset)
            hi = min((block + 1) * INIT_BLOCK_ROWS, shard.row_offset + rows)
            piece = values[
                lo - block * INIT_BLOCK_ROWS : hi - block * INIT_BLOCK_ROWS, shard.col_offset : shard.col_offset + cols
            ]
            shard.weight[lo - shard.row_offset : hi - shard.row_offset].copy_(piece)


def local_table_bytes(model: DistributedModelParallel, shards: list[RowShard]) -> int:
    """Bytes this rank holds for the sharded table: its rows and their fused optimizer state."""
    total = sum(s.weight.numel() * s.weight.element_size() for s in shards)
    for per_param in model.fused_optimizer.state_dict().get("state", {}).values():
        for value in per_param.values():
            pieces = [p.tensor for p in value.local_shards()] if hasattr(value, "local_shards") else [value]
            total += sum(p.numel() * p.element_size() for p in pieces if isinstance(p, torch.Tensor))
    return total


SCORING_BLOCK_ROWS = 1 << 16


@torch.no_grad()
def scoring_shards(
    shards: list[RowShard], num_rows: int, num_cols: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> list[RowShard]:
    """Full-width rows for scoring, each table row held by exactly one rank.

    Row-wise and table-wise pieces already are. A data-parallel replica is split into one
    contiguous row range per rank (views, no copy). Column-wise pieces are re-laid: rank r
    receives full rows of its range, block by block, each rank contributing the columns it
    holds (a sum with zeros elsewhere, so the values are exact). That copy is table / world
    bytes per rank, held only while evaluating.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    layouts: list[list[tuple[int, int, int, int]]] = [None] * world
    dist.all_gather_object(layouts, [(s.row_offset, s.col_offset, *s.weight.shape) for s in shards])
    pieces = [piece for layout in layouts for piece in layout if piece[2] > 0]
    if all(cols == num_cols for _, _, _, cols in pieces):
        if sum(rows for _, _, rows, _ in pieces) == num_rows:
            return shards  # row-wise / table-wise: disjoint full rows already
        if all(rows == num_rows for _, _, rows, _ in pieces) and len(pieces) == world:
            first, last = _row_range(num_rows, world, rank)  # data-parallel: every rank a replica
            return [RowShard(first, 0, shards[0].weight[first:last])]
    first, last = _row_range(num_rows, world, rank)
    mine = torch.empty(last - first, num_cols, dtype=dtype, device=device)
    for owner in range(world):
        for lo in range(*_row_range(num_rows, world, owner), SCORING_BLOCK_ROWS):
            hi = min(_row_range(num_rows, world, owner)[1], lo + SCORING_BLOCK_ROWS)
            block = torch.zeros(hi - lo, num_cols, dtype=dtype, device=device)
            for shard in shards:
                top, bottom = max(lo, shard.row_offset), min(hi, shard.row_offset + shard.weight.shape[0])
                if top < bottom:
                    cols = slice(shard.col_offset, shard.col_offset + shard.weight.shape[1])
                    block[top - lo : bottom - lo, cols] = shard.weight[
                        top - shard.row_offset : bottom - shard.row_offset
                    ]
            dist.reduce(block, dst=owner)
            if owner == rank:
                mine[lo - first : hi - first] = block
    return [RowShard(first, 0, mine)] if last > first else []


def _row_range(num_rows: int, world: int, rank: int) -> tuple[int, int]:
    per_rank = math.ceil(num_rows / world)
    return min(num_rows, rank * per_rank), min(num_rows, (rank + 1) * per_rank)
