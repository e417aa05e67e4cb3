"""dimerec-plan: TorchRec's own sharding plan for a cluster you describe, on any machine.

    dimerec-plan --nodes 8 --gpus-per-node 8 --hbm-gb 80 --items 1000000000 --dim 128
    dimerec-plan --nodes 1 --gpus-per-node 8 --hbm-gb 80 --items 1000000000 --dim 128 \\
        --kernel fused_uvm_caching --cache-load-factor 0.1
    dimerec-plan --config configs/my_job.yaml --nodes 4 --gpus-per-node 8 --hbm-gb 141 --items 300000000

It builds the job's model with its table on the meta device (nothing is allocated), runs the
planner the trainer runs, with the topology the trainer would build on that cluster, and
prints the plan, the memory per rank (HBM and host), the planner's step-time estimate per
rank, and beside them the plain arithmetic (rows x bytes per row / ranks). A table that
cannot fit is one error line saying how much it needs and what there is. Memory is per rank
(one GPU), as the job's sharding.hbm_gb and sharding.host_memory_gb are: a node of 8 GPUs
with 1 TB of host memory is --host-memory-gb 125.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from dimerec_dist.config import (
    KERNELS,
    SHARDING,
    SPARSE_OPTIMIZERS,
    TABLE_DTYPES,
    ConfigError,
    JobConfig,
    load_config,
)
from dimerec_dist.distributed.topology import GB, Cluster
from dimerec_dist.runtime.cli_numbers import integer, real
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level, setup_command_logging

OPTIMIZER_STATE_BYTES = {"rowwise_adagrad": lambda dim: 4, "sgd": lambda dim: 0, "adam": lambda dim: 8 * dim}
DTYPE_BYTES = {"fp32": 4, "fp16": 2}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_log_level(args)
    setup_command_logging()
    try:
        print(plan_report(args))
    except ConfigError as exc:
        print(f"dimerec-plan: error: {exc}", file=sys.stderr)
        return 2
    return 0


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The examples as written, and every option's default."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dimerec-plan", description=__doc__, formatter_class=HelpWithDefaults)
    parser.add_argument("--config", type=Path, default=None, help="the job's YAML (default: the built-in defaults)")
    parser.add_argument("--nodes", type=integer(1), default=1, help="machines")
    parser.add_argument("--gpus-per-node", type=integer(1), default=8, help="ranks per node")
    parser.add_argument("--hbm-gb", type=real(0, above=True), default=80.0, help="HBM per GPU (rank), GB")
    parser.add_argument(
        "--host-memory-gb",
        type=real(0, above=True),
        default=125.0,
        help="host memory per rank the planner may use, GB, as sharding.host_memory_gb (a 1 TB node / 8 GPUs: 125)",
    )
    parser.add_argument("--intra-host-gbps", type=real(0), default=0.0, help="GB/s between a node's GPUs (0: default)")
    parser.add_argument("--inter-host-gbps", type=real(0), default=0.0, help="GB/s between nodes per GPU (0: default)")
    parser.add_argument("--cpu", action="store_true", help="plan for CPU ranks (gloo) instead of GPUs")
    parser.add_argument("--items", type=integer(1), required=True, help="catalog size")
    parser.add_argument("--dim", type=integer(1), help="model.embedding_dim")
    parser.add_argument("--optimizer", choices=SPARSE_OPTIMIZERS, help="train.sparse_optimizer")
    parser.add_argument("--dtype", choices=TABLE_DTYPES, help="model.table_dtype")
    parser.add_argument("--kernel", choices=KERNELS, help="sharding.kernel")
    parser.add_argument("--cache-load-factor", type=real(0, 1, above=True), help="sharding.cache_load_factor")
    parser.add_argument("--sharding", choices=SHARDING, help="sharding.type")
    parser.add_argument("--batch-size", type=integer(1), help="train.batch_size (global)")
    add_log_level(parser)
    parser.add_argument("overrides", nargs="*", help="key=value job settings, as dimerec-train takes them")
    return parser


def job_config(args):
    flags = {
        "model.embedding_dim": args.dim,
        "train.sparse_optimizer": args.optimizer,
        "model.table_dtype": args.dtype,
        "sharding.kernel": args.kernel,
        "sharding.cache_load_factor": args.cache_load_factor,
        "sharding.type": args.sharding,
        "train.batch_size": args.batch_size,
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, [*args.overrides, *overrides])


@dataclass
class PlannedCluster:
    config: JobConfig
    items: int
    cluster: Cluster
    plan: object  # torchrec ShardingPlan
    estimate: dict  # rank -> distributed.sharding.ShardingEstimate

    @property
    def table_bytes(self) -> int:
        """Rows and optimizer state by hand: (items + 1) x (d x dtype bytes + optimizer bytes per row)."""
        dim = self.config.model.embedding_dim
        row = dim * DTYPE_BYTES[self.config.model.table_dtype] + OPTIMIZER_STATE_BYTES[
            self.config.train.sparse_optimizer
        ](dim)
        return (self.items + 1) * row

    @property
    def kernels(self) -> list[str]:
        return sorted(
            {option.compute_kernel for module_plan in self.plan.plan.values() for option in module_plan.values()}
        )


def plan_cluster(args) -> PlannedCluster:
    """The planner's plan for the job of `args` (dimerec-plan's arguments) on the cluster they describe."""
    from torchrec.distributed.planner.types import PlannerError

    from dimerec_dist.training.builders import plan_table, table_module

    for name in ("nodes", "gpus_per_node", "items"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    config = job_config(args)
    device = "cpu" if args.cpu else "cuda"
    if device == "cpu" and config.sharding.kernel not in ("auto", "fused"):
        raise ConfigError(f"--kernel {config.sharding.kernel} needs GPUs; CPU ranks take auto or fused")
    cluster = Cluster(
        world_size=args.nodes * args.gpus_per_node,
        local_world_size=args.gpus_per_node,
        compute_device=device,
        hbm_bytes=int(args.hbm_gb * GB) if device == "cuda" else 0,
        host_bytes=int(args.host_memory_gb * GB),
        intra_host_gbps=args.intra_host_gbps or None,
        inter_host_gbps=args.inter_host_gbps or None,
    )
    if config.train.batch_size % cluster.world_size:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} does not split evenly over {cluster.world_size} ranks"
        )
    module = table_module(config, args.items, device)
    try:
        plan, _, estimate = plan_table(module, config, cluster)
    except PlannerError as exc:
        raise ConfigError(
            f"no plan fits {args.items:,} items x d {config.model.embedding_dim} ({config.model.table_dtype}, "
            f"{config.train.sparse_optimizer}) on {cluster.describe()}: {_first_line(exc)}; "
            "more GPUs, --kernel fused_uvm_caching or --dtype fp16 make room"
        ) from None
    return PlannedCluster(config, args.items, cluster, plan, estimate)


def plan_report(args) -> str:
    return _report(plan_cluster(args))


def _report(planned: PlannedCluster) -> str:
    config, cluster, estimate = planned.config, planned.cluster, planned.estimate
    lines = [
        str(planned.plan),
        "",
        f"cluster: {cluster.describe()}",
        f"table: {planned.items:,} items x d {config.model.embedding_dim}, {config.model.table_dtype}, "
        f"{config.train.sparse_optimizer}, {config.sharding.type}, kernel {', '.join(planned.kernels)} "
        f"(asked: {config.sharding.kernel})",
        f"by hand: {planned.table_bytes / GB:,.1f} GB of rows and optimizer state, "
        f"{planned.table_bytes / cluster.world_size / GB:,.2f} GB per rank spread evenly",
        "",
        "rank | HBM (GB) | host (GB) | planner's step estimate (ms)",
        "---- | -------- | --------- | ----------------------------",
    ]
    for rank in range(cluster.world_size):
        e = estimate.get(rank)
        hbm, host, perf = (e.hbm_bytes, e.host_bytes, e.perf_ms) if e else (0, 0, 0.0)
        lines.append(f"{rank:4d} | {hbm / GB:8.2f} | {host / GB:9.2f} | {perf:.2f}")
    slowest = max((e.perf_ms for e in estimate.values()), default=0.0)
    most_hbm = max((e.hbm_bytes for e in estimate.values()), default=0)
    lines += [
        "",
        f"fullest rank: {most_hbm / GB:.2f} GB HBM of {cluster.hbm_bytes / GB:.0f} GB"
        if cluster.compute_device == "cuda"
        else f"fullest rank: {max((e.host_bytes for e in estimate.values()), default=0) / GB:.2f} GB host memory",
        f"slowest rank's embedding time per step (planner's perf model): {slowest:.2f} ms "
        f"at {config.train.batch_size // cluster.world_size:,} samples per rank",
    ]
    return "\n".join(lines)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
