"""Process groups, TorchRec sharding and the collectives the trainer needs.

Knows nothing of DimeRec: it shards whatever EmbeddingCollection a module holds (any of
TorchRec's four layouts), wraps the rest in DDP, and offers the gathers the trainer and
the evaluation need. The table's pieces on each rank are table_shards.py's business.

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
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType

from dimerec_dist.launcher import report_requested_stop

log = logging.getLogger("dimerec.parallel")

SHARDING_TYPES = {
    "row_wise": ShardingType.ROW_WISE.value,
    "table_wise": ShardingType.TABLE_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DeviceUnavailable(RuntimeError):
    """The job asks for a GPU this machine does not have: the user's setting, not a bug."""


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job, or form a one-process group when started as a plain process.

    Either way the same sharded code path runs: world size 1 is not a special case.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda and not torch.cuda.is_available():
        raise DeviceUnavailable(f"train.device=cuda but torch {torch.__version__} sees no CUDA device on "
                                f"{socket.gethostname()}; use train.device=auto or cpu")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise DeviceUnavailable(f"local rank {local_rank} on {socket.gethostname()} needs GPU {local_rank}, "
                                f"{torch.cuda.device_count()} visible: one rank per GPU (--nproc_per_node)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts. Without a per-attempt prefix, a
            # restarted worker can read a dead worker's address from it and fail to connect.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend, store=dist.PrefixStore(f"dimerec/attempt_{attempt}", store),
                                    rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
        else:
            dist.init_process_group(backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
                       backend=backend)


def shutdown(wait_for_peers: bool = True) -> None:
    """Leave the group. After a clean run, together: a rank tearing down gloo while a peer
    still talks to it aborts the peer. After an error, at once (peers may never arrive)."""
    # Free what still holds the group (DDP, sharded modules sit in reference cycles) while the
    # group exists: torn down later, at interpreter exit, their threads abort the process.
    gc.collect()
    if dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped by a signal after saving a checkpoint


def run_command(name: str, job: Callable[[], object], user_errors: tuple[type[Exception], ...]) -> int:
    """Run a command's job and leave the process group. A user error (bad config, data,
    checkpoint) is one line on stderr and exit code 2; a job stopped by a signal after its
    checkpoint exits 143 (0 under dimerec-torchrun, which exits 143); anything else is a bug and raises."""
    try:
        result = job()
    except (*user_errors, DeviceUnavailable) as exc:
        sys.stderr.write(f"{name}: error: {exc}\n")  # one write: the ranks' lines never interleave
        sys.stderr.flush()
        shutdown(wait_for_peers=False)
        return 2
    shutdown()
    if not (isinstance(result, dict) and result.get("preempted")):
        return 0
    # Under dimerec-torchrun, a clean exit keeps torchrun from restarting a job that was asked to
    # stop; the launcher itself then ends with 143.
    return 0 if report_requested_stop("a signal reached the job") \
        else PREEMPTED_EXIT_CODE


def plan_sharding(module: nn.Module, table_name: str, sharding_type: str, ctx: DistContext,
                  column_block: int = 0) -> tuple[ShardingPlan, list, dict[int, int]]:
    """The planner's plan for the table, its sharders, and (on rank 0) its memory estimate
    per rank in bytes (device memory on GPU, host memory on CPU)."""
    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"unknown sharding type {sharding_type!r} ({', '.join(SHARDING_TYPES)})")
    sharders = [EmbeddingCollectionSharder()]  # the optimizer comes from apply_optimizer_in_backward
    topology = Topology(world_size=ctx.world_size, compute_device=ctx.device.type)
    # Column-wise: TorchRec's default column block is as wide as the table for d <= 128, which would put
    # the whole table on one rank; by default one block per rank spreads it (a multiple of 4 wide).
    min_partition = None
    if sharding_type == "column_wise":
        min_partition = resolved_column_block(column_block, _table_dim(module, table_name), ctx.world_size)
    constraints = {table_name: ParameterConstraints(sharding_types=[SHARDING_TYPES[sharding_type]],
                                                    min_partition=min_partition)}
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    estimate: dict[int, int] = {}
    for option in getattr(planner, "_best_plan", None) or []:
        for shard in option.shards:
            if shard.rank is not None and shard.storage is not None:
                used = shard.storage.hbm if ctx.device.type == "cuda" else shard.storage.ddr
                estimate[shard.rank] = estimate.get(shard.rank, 0) + int(used)
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


def shard_model(module: nn.Module, plan: ShardingPlan, sharders: list, ctx: DistContext,
                find_unused_parameters: bool = False) -> DistributedModelParallel:
    """`find_unused_parameters`: some dense parameters get no gradient (a DAM the losses do not
    train); DDP then searches the graph every step for them, so it is off unless needed."""
    wrapper = DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=find_unused_parameters)
    model = DistributedModelParallel(module, device=ctx.device, plan=plan, sharders=sharders,
                                     data_parallel_wrapper=wrapper)
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

    # Sharded modules keep their lookups in a plain list, out of modules()' reach.
    lookups = [lookup for owner in model.modules() for lookup in getattr(owner, "_lookups", [])]
    for module in (m for lookup in lookups for m in lookup.modules()):
        if (isinstance(module, DenseTableBatchedEmbeddingBagsCodegen) and module.pooling_mode == PoolingMode.NONE
                and module.weights.device.type == "cpu"):
            module.forward = functools.partial(_sequence_lookup, module)


def _sequence_lookup(table, indices: torch.Tensor, offsets: torch.Tensor, per_sample_weights=None,
                     feature_requires_grad=None, batch_size_per_feature_per_rank=None) -> torch.Tensor:
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


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all ranks (same shape on every rank)."""
    if dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _AllGatherWithGradient(torch.autograd.Function):
    """all_gather_cat that passes gradients back: each rank gets the sum over ranks of the
    gradient of its own rows (an all-reduce, which gloo has, unlike reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_cat(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        if dist.get_world_size() > 1:
            dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate the ranks' tensors along dim 0, differentiably (same shape on every rank)."""
    return _AllGatherWithGradient.apply(tensor)


def all_reduce_max_int(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
