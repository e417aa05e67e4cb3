"""Sizing on paper: a 10^9-item table on 8 to 256 GPUs.

    python tools/sizing.py [--items 1e9] [--dims 64 128] [--hbm-gb 80] [--batch-per-gpu 256]

Per row: fp32 weights (4 d bytes) plus row-wise Adagrad's one fp32 accumulator (4 bytes).
Row-wise sharding splits rows evenly, so each GPU holds 1/N of the table. Per step and
GPU, the lookups are its samples' histories and targets plus the step's shared
negatives; with row-wise sharding a fraction (N-1)/N of them live on other GPUs, so the
all-to-all moves that share of the ids (8 bytes) forward, the embeddings (4 d bytes)
forward and their gradients (4 d bytes) backward. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=float, default=1e9)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--hbm-gb", type=float, default=80.0, help="memory per GPU (H100: 80)")
    parser.add_argument("--table-share", type=float, default=0.7, help="share of HBM the table may use")
    parser.add_argument("--batch-per-gpu", type=int, default=256)
    parser.add_argument("--history", type=int, default=50, help="mean history length per sample")
    parser.add_argument("--negatives", type=int, default=1024)
    args = parser.parse_args()
    lookups = args.batch_per_gpu * (args.history + 1) + args.negatives
    print(
        f"{args.items:.0e} items; {lookups:,} lookups per GPU per step (batch {args.batch_per_gpu} x "
        f"(history {args.history} + target) + {args.negatives} negatives); table may use "
        f"{args.table_share:.0%} of {args.hbm_gb:.0f} GB.\n"
    )
    print(
        "| d | bytes/row (fp32 + row-wise Adagrad) | whole table | GPUs | table per GPU | fits | "
        "all-to-all per GPU per step (fwd ids + fwd emb + bwd grads) |"
    )
    print("|---|---|---|---|---|---|---|")
    for d in args.dims:
        row_bytes = 4 * d + 4
        table = args.items * row_bytes
        for gpus in args.gpus:
            per_gpu = table / gpus
            remote = lookups * (gpus - 1) / gpus
            wire = remote * (8 + 4 * d + 4 * d)
            fits = "yes" if per_gpu <= args.hbm_gb * 1e9 * args.table_share else "no"
            print(
                f"| {d} | {row_bytes} | {table / 1e9:,.0f} GB | {gpus} | {per_gpu / 1e9:,.1f} GB | {fits} | "
                f"{wire / 1e6:.1f} MB |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
