"""Everything a job builds from (config, distributed context, catalog): the sharded model and
this rank's table pieces, the fused table optimizer, the dense optimizer and its schedule.

Training, evaluation, export, the benchmarks and the tests all build here, so the model a
benchmark times or an export loads is the one training ran. Building is deterministic:
the dense weights come from the seed, identical on every rank and world size, and the
table is initialised row by row from the seed whatever the layout (distributed/table_shards.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dimerec_dist.config import ConfigError, JobConfig
from dimerec_dist.distributed.sharded_model import TABLE_NAME, TABLE_STATE_KEY, ShardedDimeRec
from dimerec_dist.distributed.sharding import plan_sharding, shard_model
from dimerec_dist.distributed.table_shards import init_table_deterministically, local_row_shards, local_table_bytes
from dimerec_dist.distributed.topology import Cluster, this_cluster
from dimerec_dist.runtime.process_group import DistContext

log = logging.getLogger("dimerec.train")


@dataclass
class TrainingParts:
    """What one training step touches."""

    model: torch.nn.Module  # TorchRec's DistributedModelParallel around ShardedDimeRec
    shards: list  # this rank's pieces of the item table (table_shards.RowShard)
    params: list  # the dense parameters (GEM and DAM)
    optimizer: torch.optim.Optimizer  # dense Adam
    schedule: torch.optim.lr_scheduler.LRScheduler
    table_optimizer: torch.optim.Optimizer | None  # only for a data-parallel table (else fused into backward)


def sparse_optimizer(config: JobConfig, device_type: str) -> tuple[type, dict]:
    """The optimizer TorchRec fuses into the table's backward pass on `device_type` (cuda, cpu)."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    kind, lr = config.train.sparse_optimizer, config.train.sparse_lr
    if kind == "adam" and device_type != "cuda":
        raise ConfigError("train.sparse_optimizer=adam is fused only on GPU; use rowwise_adagrad or sgd on CPU")
    return {
        "rowwise_adagrad": (RowWiseAdagrad, {"lr": lr, "eps": 1e-8}),
        "sgd": (torch.optim.SGD, {"lr": lr}),
        "adam": (torch.optim.Adam, {"lr": lr}),
    }[kind]


def ids_per_sample(config: JobConfig, batch_per_rank: int) -> list[float]:
    """What each feature of the table reads per sample, for the planner's estimates: a history
    (at most max_history ids), the target, and the step's shared negatives spread over the batch."""
    return [float(config.model.max_history), 1.0, config.train.negatives / max(1, batch_per_rank)]


def plan_table(module: ShardedDimeRec, config: JobConfig, cluster: Cluster, group=None):
    """TorchRec's plan for the item table of `module` on `cluster` (distributed.sharding.plan_sharding)."""
    batch_per_rank = max(1, config.train.batch_size // cluster.world_size)
    return plan_sharding(
        module,
        TABLE_NAME,
        config.sharding.type,
        cluster,
        column_block=config.sharding.column_block,
        kernel=config.sharding.kernel,
        cache_load_factor=config.sharding.cache_load_factor,
        batch_per_rank=batch_per_rank,
        ids_per_sample=ids_per_sample(config, batch_per_rank),
        group=group,
    )


def table_module(config: JobConfig, num_items: int, device_type: str) -> ShardedDimeRec:
    """The unsharded model, its table on the meta device with its fused optimizer attached."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    torch.manual_seed(config.seed)  # dense weights: identical on every rank and every world size
    module = ShardedDimeRec(config.model, num_items, in_batch_negatives=config.train.in_batch_negatives)
    optimizer_class, optimizer_args = sparse_optimizer(config, device_type)
    apply_optimizer_in_backward(optimizer_class, module.item_table.parameters(), optimizer_args)
    return module


def build_model(config: JobConfig, num_items: int, ctx: DistContext, run_dir: Path | None):
    """The sharded model: plan, shard, then a deterministic table init that any world size repeats."""
    if ctx.device.type != "cuda" and config.sharding.kernel not in ("auto", "fused"):
        raise ConfigError(f"sharding.kernel={config.sharding.kernel} needs a GPU; on CPU use auto or fused")
    module = table_module(config, num_items, ctx.device.type)
    cluster = this_cluster(ctx.world_size, ctx.device, config.sharding)
    plan, sharders, estimate = plan_table(module, config, cluster, group=dist.GroupMember.WORLD)
    model = shard_model(module, plan, sharders, ctx, find_unused_parameters=not config.model.trains_dam)
    shards = local_row_shards(model, TABLE_STATE_KEY)
    init_table_deterministically(shards, config.model.embedding_dim, config.seed, config.train.embedding_init)
    held = [None] * ctx.world_size
    dist.all_gather_object(held, ([tuple(s.weight.shape) for s in shards], local_table_bytes(model, shards)))
    if ctx.is_main:
        lines = [
            f"rank {r}: {_pieces(pieces)}, table + optimizer state {_size(measured)} measured, "
            f"planner estimate {_estimate(estimate.get(r), ctx.device.type)}"
            for r, (pieces, measured) in enumerate(held)
        ]
        summary = (
            f"{plan}\n\nplanned for {cluster.describe()}\n"
            f"memory per rank ({config.sharding.type}, {ctx.world_size} ranks):\n" + "\n".join(lines)
        )
        log.info("sharding plan:\n%s", summary)
        if run_dir is not None:
            (run_dir / "sharding_plan.txt").write_text(summary + "\n")
    return model, shards


def replicated_table_optimizer(model, config: JobConfig, ctx: DistContext) -> torch.optim.Optimizer | None:
    """The table's optimizer when it is data-parallel. TorchRec fuses optimizers into sharded
    tables only; a replicated table is a plain parameter (its DDP averages the gradient), so
    the configured sparse optimizer steps it after backward, like the dense one."""
    if config.sharding.type != "data_parallel":
        return None
    optimizer_class, optimizer_args = sparse_optimizer(config, ctx.device.type)
    table = [p for name, p in model.named_parameters() if name.endswith(TABLE_STATE_KEY)]
    if len(table) != 1:
        raise RuntimeError(f"expected the data-parallel table among the parameters, found {len(table)}")
    return optimizer_class(table, **optimizer_args)


def dense_optimizer(model, config: JobConfig):
    """Adam on GEM and DAM (`model` is the sharded model, or anything with .module.dimerec), and
    its warm-up schedule."""
    params = list(model.module.dimerec.parameters())
    optimizer = torch.optim.Adam(params, lr=config.train.dense_lr, weight_decay=config.train.weight_decay)
    warmup = config.train.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    return params, optimizer, schedule


def build_training(config: JobConfig, num_items: int, ctx: DistContext, run_dir: Path | None) -> TrainingParts:
    model, shards = build_model(config, num_items, ctx, run_dir)
    params, optimizer, schedule = dense_optimizer(model, config)
    return TrainingParts(model, shards, params, optimizer, schedule, replicated_table_optimizer(model, config, ctx))


def _estimate(estimate, device_type: str) -> str:
    """The planner's bytes for a rank: device memory on GPU (and host memory where it puts rows there)."""
    if estimate is None:
        return _size(0)
    if device_type != "cuda":
        return _size(estimate.host_bytes)
    return _size(estimate.hbm_bytes) + (f" HBM + {_size(estimate.host_bytes)} host" if estimate.host_bytes else "")


def _pieces(shapes: list[tuple[int, int]]) -> str:
    """'151 rows x 16 columns' for the table pieces one rank holds."""
    if not shapes:
        return "0 rows"
    return " + ".join(f"{rows:,} rows x {cols} columns" for rows, cols in shapes)


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1024
    return ""
