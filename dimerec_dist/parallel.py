"""Process groups, TorchRec sharding and the collectives the trainer needs.

Knows nothing of DimeRec: it shards whatever EmbeddingCollection a module holds, wraps
the rest in DDP, and offers gathers and the local rows of a sharded table.

Gradient scaling, the one subtle point: TorchRec sums the sharded table's gradients over
ranks, while plain DDP averages dense gradients. The trainer's loss is a sum over local
samples divided by the *global* batch size, and DDP here sums too (a comm hook), so
both parts see exactly the gradient of the global mean loss, for any world size.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType

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


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job, or form a one-process group when started as a plain process.

    Either way the same sharded code path runs: world size 1 is not a special case.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
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
    checkpoint exits 143; anything else is a bug and raises."""
    try:
        result = job()
    except user_errors as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        shutdown(wait_for_peers=False)
        return 2
    shutdown()
    return PREEMPTED_EXIT_CODE if isinstance(result, dict) and result.get("preempted") else 0


class _SumDataParallelWrapper(DefaultDataParallelWrapper):
    """TorchRec's default DDP wrapping, with gradients summed instead of averaged."""

    def _ddp_wrap(self, dmp, env, device, ddp_ignore_param_names) -> None:
        super()._ddp_wrap(dmp, env, device, ddp_ignore_param_names)
        ddp = dmp._dmp_wrapped_module
        if isinstance(ddp, nn.parallel.DistributedDataParallel):
            ddp.register_comm_hook(None, _allreduce_sum_hook)


def _allreduce_sum_hook(process_group, bucket):
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def plan_sharding(module: nn.Module, table_name: str, sharding_type: str,
                  ctx: DistContext) -> tuple[ShardingPlan, list, dict[int, int]]:
    """The planner's plan for the table, its sharders, and (on rank 0) its memory estimate
    per rank in bytes (device memory on GPU, host memory on CPU)."""
    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"unknown sharding type {sharding_type!r} ({', '.join(SHARDING_TYPES)})")
    sharders = [EmbeddingCollectionSharder()]  # the optimizer comes from apply_optimizer_in_backward
    topology = Topology(world_size=ctx.world_size, compute_device=ctx.device.type)
    constraints = {table_name: ParameterConstraints(sharding_types=[SHARDING_TYPES[sharding_type]])}
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    estimate: dict[int, int] = {}
    for option in getattr(planner, "_best_plan", None) or []:
        for shard in option.shards:
            if shard.rank is not None and shard.storage is not None:
                used = shard.storage.hbm if ctx.device.type == "cuda" else shard.storage.ddr
                estimate[shard.rank] = estimate.get(shard.rank, 0) + int(used)
    return plan, sharders, estimate


def shard_model(module: nn.Module, plan: ShardingPlan, sharders: list, ctx: DistContext) -> DistributedModelParallel:
    return DistributedModelParallel(module, device=ctx.device, plan=plan, sharders=sharders,
                                    data_parallel_wrapper=_SumDataParallelWrapper(static_graph=False,
                                                                                  find_unused_parameters=True))


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
        return [RowShard(int(s.metadata.shard_offsets[0]), int(s.metadata.shard_offsets[1]), s.tensor)
                for s in value.local_shards()]
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
            piece = values[lo - block * INIT_BLOCK_ROWS:hi - block * INIT_BLOCK_ROWS,
                           shard.col_offset:shard.col_offset + cols]
            shard.weight[lo - shard.row_offset:hi - shard.row_offset].copy_(piece)


def local_table_bytes(model: DistributedModelParallel, shards: list[RowShard]) -> int:
    """Bytes this rank holds for the sharded table: its rows and their fused optimizer state."""
    total = sum(s.weight.numel() * s.weight.element_size() for s in shards)
    for per_param in model.fused_optimizer.state_dict().get("state", {}).values():
        for value in per_param.values():
            for piece in (value.local_shards() if hasattr(value, "local_shards") else []):
                total += piece.tensor.numel() * piece.tensor.element_size()
    return total


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all ranks (same shape on every rank)."""
    if dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_max_int(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
