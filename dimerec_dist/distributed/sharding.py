"""The item table's sharding: TorchRec's planner picks the layout (row-, table-, column-wise
or data-parallel), DistributedModelParallel shards the table and wraps the rest in DDP.

Knows nothing of DimeRec: it shards whatever EmbeddingCollection a module holds. The
table's pieces on each rank are distributed/table_shards.py's business.

Gradient scaling: every part follows the libraries' convention of averaging over ranks.
Each rank's loss is the mean over its own samples (all ranks hold the same number); DDP
averages the dense gradients, TorchRec divides the sharded table's gradients by the
world size on their way back to the owning rank (comm_ops.GRADIENT_DIVISION), and a
data-parallel table's DDP averages too. So every parameter sees the gradient of the
global mean loss, for any world size and sharding type (tests/distributed checks it
with SGD, which, unlike Adagrad, would show a wrong scale).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import CacheParams, ShardingPlan, ShardingType

from dimerec_dist.config import KERNELS, SHARDING
from dimerec_dist.distributed.private_api import chosen_sharding_options, sharded_lookups
from dimerec_dist.distributed.topology import Cluster
from dimerec_dist.runtime.library_noise import drop_warning
from dimerec_dist.runtime.process_group import DistContext

# TorchRec's own DDP wrapper passes broadcast_buffers=False, which torch deprecates: not ours to change.
drop_warning("`broadcast_buffers` is deprecated")

SHARDING_TYPES = {name: ShardingType[name.upper()].value for name in SHARDING}  # config names -> TorchRec's
# Memory the planner leaves to everything that is not the table (dense model, activations, buffers):
# TorchRec's default margin, without its heuristic dense-size estimate, which is wrong on a meta model.
RESERVED_FRACTION = 0.15


@dataclass
class ShardingEstimate:
    """The planner's estimate for one rank: bytes in device and host memory, and its step time."""

    hbm_bytes: int = 0
    host_bytes: int = 0
    perf_ms: float = 0.0


def plan_sharding(
    module: nn.Module,
    table_name: str,
    sharding_type: str,
    cluster: Cluster,
    *,
    column_block: int = 0,
    kernel: str = "auto",
    cache_load_factor: float = 0.2,
    batch_per_rank: int | None = None,
    ids_per_sample: list[float] | None = None,
    group: dist.ProcessGroup | None = None,
) -> tuple[ShardingPlan, list, dict[int, ShardingEstimate]]:
    """The planner's plan for the table on `cluster`, its sharders, and its estimate per rank.
    `ids_per_sample`: mean ids each feature of the table reads per sample (the planner's pooling
    factors). With `group`, every rank of it plans and rank 0's plan is used (collective_plan);
    without, it plans for a cluster that need not exist (dimerec-plan)."""
    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"unknown sharding type {sharding_type!r} ({', '.join(SHARDING_TYPES)})")
    if kernel not in KERNELS:
        raise ValueError(f"unknown compute kernel {kernel!r} ({', '.join(KERNELS)})")
    sharders = [EmbeddingCollectionSharder()]  # the optimizer comes from apply_optimizer_in_backward
    # Column-wise: TorchRec's default column block is as wide as the table for d <= 128, which would put
    # the whole table on one rank; by default one block per rank spreads it (a multiple of 4 wide).
    min_partition = None
    if sharding_type == "column_wise":
        min_partition = resolved_column_block(column_block, _table_dim(module, table_name), cluster.world_size)
    constraint = ParameterConstraints(
        sharding_types=[SHARDING_TYPES[sharding_type]],
        min_partition=min_partition,
        compute_kernels=None if kernel == "auto" else [kernel],
        cache_params=CacheParams(load_factor=cache_load_factor) if kernel in ("auto", "fused_uvm_caching") else None,
    )
    if ids_per_sample is not None:
        constraint.pooling_factors = list(ids_per_sample)
    planner = EmbeddingShardingPlanner(
        topology=cluster.topology(),
        batch_size=batch_per_rank,
        constraints={table_name: constraint},
        storage_reservation=FixedPercentageStorageReservation(RESERVED_FRACTION),
        debug=False,
    )
    plan = planner.plan(module, sharders) if group is None else planner.collective_plan(module, sharders, group)
    estimate: dict[int, ShardingEstimate] = {}
    for option in chosen_sharding_options(planner):
        for shard in option.shards:
            if shard.rank is None:
                continue
            rank = estimate.setdefault(shard.rank, ShardingEstimate())
            if shard.storage is not None:
                rank.hbm_bytes += int(shard.storage.hbm)
                rank.host_bytes += int(shard.storage.ddr)
            if shard.perf is not None:
                rank.perf_ms += float(shard.perf.total)
    return plan, sharders, estimate


def resolved_column_block(configured: int, dim: int, world_size: int) -> int:
    """Columns per column-wise block: as configured, or d / world size rounded down to a multiple of 4."""
    return configured or max(4, dim // world_size // 4 * 4)


def _table_dim(module: nn.Module, table_name: str) -> int:
    for collection in module.modules():
        for table in getattr(collection, "embedding_configs", lambda: [])():
            if table.name == table_name:
                return table.embedding_dim
    raise KeyError(f"no embedding table named {table_name!r}")


def shard_model(
    module: nn.Module, plan: ShardingPlan, sharders: list, ctx: DistContext, find_unused_parameters: bool = False
) -> DistributedModelParallel:
    """`find_unused_parameters`: some dense parameters get no gradient (a DAM the losses do not
    train); DDP then searches the graph every step for them, so it is off unless needed."""
    wrapper = DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=find_unused_parameters)
    model = DistributedModelParallel(
        module, device=ctx.device, plan=plan, sharders=sharders, data_parallel_wrapper=wrapper
    )
    _unpool_cpu_sequence_lookups(model)
    return model


def _unpool_cpu_sequence_lookups(model: nn.Module) -> None:
    """Make data-parallel sequence lookups return one row per id on CPU.

    TorchRec's data-parallel EmbeddingCollection uses FBGEMM's dense table with pooling
    NONE, but the CPU build of that op (fbgemm-gpu-cpu 1.8) pools each bag anyway: it
    returns one row per sample and feature instead of one per id, and TorchRec then
    fails to split it. On CPU those modules look up their ids with a plain indexed read
    of the same weights instead (the same rows forward, the same gradient backward).
    Only this model's modules are touched; GPU lookups keep FBGEMM's kernel.
    """
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
        PoolingMode,
    )

    for module in (m for lookup in sharded_lookups(model) for m in lookup.modules()):
        if (
            isinstance(module, DenseTableBatchedEmbeddingBagsCodegen)
            and module.pooling_mode == PoolingMode.NONE
            and module.weights.device.type == "cpu"
        ):
            module.forward = functools.partial(_sequence_lookup, module)


def _sequence_lookup(
    table,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights=None,
    feature_requires_grad=None,
    batch_size_per_feature_per_rank=None,
) -> torch.Tensor:
    """(ids, D) rows of a dense FBGEMM table: ids are grouped by feature, B bags per feature,
    and feature f reads the table whose first row is hash_size_cumsum[f]."""
    if any(dim != table.max_D for _, dim in table.embedding_specs) or per_sample_weights is not None:
        raise NotImplementedError("CPU data-parallel lookup: tables of one dimension, unweighted ids only")
    features = table.D_offsets.numel() - 1
    bags = (offsets.numel() - 1) // features
    feature_starts = offsets[torch.arange(features, device=offsets.device) * bags]
    positions = torch.arange(indices.numel(), device=indices.device, dtype=feature_starts.dtype)
    feature_of_id = torch.searchsorted(feature_starts, positions, right=True) - 1
    rows = indices.long() + table.hash_size_cumsum[:features][feature_of_id]
    return F.embedding(rows, table.weights.view(-1, table.max_D))
