"""Sizing a 10^9-item table on 8 to 256 GPUs: TorchRec's planner (dimerec-plan) beside the hand arithmetic.

    python tools/sizing.py                                  # writes the tables of docs/SIZING.md
    python tools/sizing.py --items 3e8 --dims 64 --hbm-gb 141 --gpus 8 16

For each embedding width and cluster (nodes of 8 GPUs), the planner plans the job's table
as dimerec-train would on that cluster (dimerec_dist/commands/plan.py: the job's model on the
meta device, the topology from the sizes given), once with the kernel it picks (auto) and,
where the table does not fit the GPUs' memory, with UVM caching. Beside it, the arithmetic
the planner replaces: per row, fp32 weights (4 d bytes) plus row-wise Adagrad's one fp32
accumulator (4 bytes), spread evenly over the GPUs; and the all-to-all per GPU and step for
row-wise sharding: the share (N-1)/N of the lookups that live on other GPUs moves its ids
(8 bytes) forward, its rows (4 d bytes) forward and their gradients (4 d bytes) backward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from dimerec_dist.commands.plan import parser as plan_parser
    from dimerec_dist.commands.plan import plan_cluster
    from dimerec_dist.config import ConfigError
    from dimerec_dist.distributed.topology import GB

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=float, default=1e9)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--hbm-gb", type=float, default=80.0, help="memory per GPU (H100: 80, H200: 141)")
    parser.add_argument("--host-memory-gb", type=float, default=2000.0, help="host memory per node")
    parser.add_argument("--batch-per-gpu", type=int, default=4096)
    parser.add_argument("--history", type=int, default=50, help="model.max_history")
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--cache-load-factor", type=float, default=0.2)
    args = parser.parse_args()
    items = int(args.items)
    lookups = args.batch_per_gpu * (args.history + 1) + args.negatives
    print(
        f"{items:,} items, row-wise, row-wise Adagrad, fp32; nodes of {args.gpus_per_node} GPUs with "
        f"{args.hbm_gb:.0f} GB of HBM each and {args.host_memory_gb:,.0f} GB of host memory; {args.batch_per_gpu:,} "
        f"samples per GPU (history {args.history}, {args.negatives:,} shared negatives: {lookups:,} lookups per GPU "
        f"per step). Planner: TorchRec's, leaving 15% of each memory to the rest of the job.\n"
    )
    print(
        "| d | GPUs | by hand: table per GPU | all-to-all per GPU per step | planner: kernel | HBM per GPU "
        "| host per GPU | planner's embedding time per step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        for gpus in args.gpus:
            nodes = max(1, gpus // args.gpus_per_node)
            per_node = min(gpus, args.gpus_per_node)
            remote = lookups * (gpus - 1) / gpus
            all_to_all = remote * (8 + 4 * dim + 4 * dim)
            by_hand = (items + 1) * (4 * dim + 4) / gpus
            for kernel in ("auto", "fused_uvm_caching"):
                plan_args = plan_parser().parse_args(
                    [
                        *("--nodes", str(nodes), "--gpus-per-node", str(per_node)),
                        *("--hbm-gb", str(args.hbm_gb), "--host-memory-gb", str(args.host_memory_gb)),
                        *("--items", str(items), "--dim", str(dim), "--optimizer", "rowwise_adagrad"),
                        *("--kernel", kernel, "--cache-load-factor", str(args.cache_load_factor)),
                        *("--batch-size", str(args.batch_per_gpu * gpus)),
                        f"model.max_history={args.history}",
                        f"train.negatives={args.negatives}",
                    ]
                )
                hand = f"| {dim} | {gpus} | {by_hand / GB:,.1f} GB | {all_to_all / 1e6:.1f} MB |"
                try:
                    planned = plan_cluster(plan_args)
                except ConfigError:
                    print(f"{hand} {kernel}: no plan fits | | | |")
                    continue
                estimate = planned.estimate.values()
                hbm, host = max(e.hbm_bytes for e in estimate) / GB, max(e.host_bytes for e in estimate) / GB
                perf = max(e.perf_ms for e in estimate)
                print(f"{hand} {', '.join(planned.kernels)} | {hbm:,.1f} GB | {host:,.1f} GB | {perf:.1f} ms |")
                if "fused_uvm_caching" in planned.kernels or kernel == "fused_uvm_caching":
                    break
                if by_hand < 0.5 * args.hbm_gb * GB:
                    break  # fits well in HBM: the caching plan adds nothing to read
    return 0


if __name__ == "__main__":
    sys.exit(main())
