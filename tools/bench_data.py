"""Loader throughput against the trainer's, on one prepared dataset, measured side by side.

    python tools/bench_data.py --data runs/bench/prepared [--world 2] [--steps 400] [--batch 256]

Each measurement runs in its own process (so peak RSS is its own), one after the other:
- the loader of rank 0 of a `--world`-rank job, in-process decoding (`local`) and Ray
  tasks (`ray`): batches per second as the trainer makes them (data/batch_maker.py: the KJT,
  the step's negatives and noise), as samples/s per rank;
- the trainer itself under torchrun with `--world` ranks on the same data and batch:
  samples/s per rank from its metrics.jsonl.
Prints a JSON report with the ratio loader / trainer for each backend.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from provenance import write_provenance  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]


def measure_loader(data: str, backend: str, world: int, steps: int, batch: int, max_history: int) -> dict:
    import torch

    from dimerec_dist.config import load_config
    from dimerec_dist.data.batch_maker import BatchMaker
    from dimerec_dist.data.schema import Manifest
    from dimerec_dist.data.stream import TrainStream

    manifest = Manifest.load(data)
    stream = TrainStream(
        manifest,
        max_history=max_history,
        global_batch=batch,
        streams=world,
        world_size=world,
        rank=0,
        seed=0,
        backend=backend,
        window_size=4,
    )
    config = load_config(None, [f"train.batch_size={batch}", f"model.max_history={max_history}"])
    batch_maker = BatchMaker(config, manifest.num_items, None, torch.from_numpy(stream.global_rows))
    batches = stream.batches(0)
    next(batches)  # start-up (Ray workers, first row groups) is not throughput
    started, count = time.time(), 0
    for step, history, targets in batches:
        batch_maker(0, step, history, targets)
        count += 1
        if count == steps:
            break
    elapsed = time.time() - started
    return {
        "backend": backend,
        "steps": count,
        "samples_per_s_per_rank": count * batch // world / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_trainer(data: str, world: int, steps: int, batch: int, max_history: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            "-m",
            "dimerec_dist.commands.train",
            "--run-dir",
            run_dir,
            "data.source=prepared",
            f"data.path={data}",
            f"train.max_steps={steps}",
            f"train.batch_size={batch}",
            f"model.max_history={max_history}",
            "train.eval_every_epochs=0",
            "eval.at_end=false",
            "train.log_every=20",
        ]
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    rates = [row["throughput/samples_per_s"] for row in rows if "throughput/samples_per_s" in row][1:]
    return {
        "steps": steps,
        "samples_per_s_per_rank": float(np.median(rates)) / world,
        "peak_rss_mb_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="also write results.json and provenance.json here")
    parser.add_argument("--only", choices=("local", "ray"), help=argparse.SUPPRESS)  # one loader, in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure_loader(args.data, args.only, args.world, args.steps, args.batch, args.max_history)))
        return 0
    report = {"data": args.data, "world": args.world, "batch": args.batch}
    for backend in ("local", "ray"):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--data",
                args.data,
                "--world",
                str(args.world),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-history",
                str(args.max_history),
                "--only",
                backend,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        report[f"loader_{backend}"] = json.loads(done.stdout.strip().splitlines()[-1])
    report["trainer"] = measure_trainer(args.data, args.world, args.steps, args.batch, args.max_history)
    for backend in ("local", "ray"):
        report[f"ratio_{backend}_to_trainer"] = (
            report[f"loader_{backend}"]["samples_per_s_per_rank"] / report["trainer"]["samples_per_s_per_rank"]
        )
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        write_provenance(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
