"""Time per epoch of a prepared data set, per-prefix mode against sequence mode, from the trainer.

    python tools/bench_scale_data.py --out runs/scale --events 100000000 --users 1000000 --items 1000000
    python tools/bench_epoch.py --data runs/scale/prepared --out runs/bench_epoch --steps 300

Each mode is a dimerec-train job under torchrun (--world ranks) on the same data, model and
global batch (d 64, K 4, ComiRec-SA with score-bias positions in both, so both train the same
model): --warmup steps, then --steps timed steps, read from the time stamps of its
metrics.jsonl. An epoch's time is the data set's training samples over the timed rate: the
whole epoch is run only where --steps reaches it. Writes results.md and results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from provenance import write_provenance  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]
MODES = {"per_prefix": "data.sample_mode=all", "sequence": "data.sample_mode=sequence"}


def timed_rate(metrics: Path, warmup: int) -> tuple[float, int]:
    """(steps/s, steps timed) between the first logged step at or after `warmup` and the last."""
    rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if "loss/total" in row]
    first = next(row for row in rows if row["step"] >= warmup)
    last = rows[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"]), last["step"] - first["step"]


def run_mode(args, mode: str) -> dict:
    run_dir = Path(args.out) / mode
    shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own scratch run
    overrides = [
        "data.source=prepared",
        f"data.path={args.data}",
        MODES[mode],
        "model.embedding_dim=64",
        f"model.max_history={args.history}",
        "model.num_interests=4",
        "model.attention_positions=bias",
        f"train.batch_size={args.batch}",
        "train.negatives=1024",
        f"train.max_steps={args.warmup + args.steps}",
        f"train.log_every={args.log_every}",
        "train.eval_every_epochs=0",
        "eval.at_end=false",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.world}",
        "-m",
        "dimerec_dist.commands.train",
        "--run-dir",
        str(run_dir),
        *overrides,
    ]
    threads = max(1, (os.cpu_count() or 1) // args.world)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"{mode}: {' '.join(command)}", flush=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    steps_per_s, timed = timed_rate(run_dir / "metrics.jsonl", args.warmup)
    manifest = json.loads((Path(args.data) / "manifest.json").read_text())
    samples = manifest["counts"]["train_samples"]
    result = {
        "mode": mode,
        "world": args.world,
        "batch": args.batch,
        "history": args.history,
        "timed_steps": timed,
        "targets_per_s": steps_per_s * args.batch,
        "train_samples": samples,
        "epoch_hours": samples / (steps_per_s * args.batch) / 3600,
    }
    print(
        f"{mode}: {result['targets_per_s']:,.0f} targets/s over {timed} steps -> "
        f"{result['epoch_hours']:.2f} h per epoch of {samples:,} samples",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dimerec-prepare output")
    parser.add_argument("--out", default="runs/bench_epoch")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024, help="global batch (targets)")
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per mode")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_mode(args, mode) for mode in MODES]
    per_prefix, sequence = results
    rows = [
        "| mode | targets/s | timed steps | time per epoch (h) |",
        "|---|---|---|---|",
        *[
            f"| {r['mode']} | {r['targets_per_s']:,.0f} | {r['timed_steps']} | {r['epoch_hours']:.2f} |"
            for r in results
        ],
    ]
    text = "\n".join(
        [
            f"Machine: {args.machine}; {args.data}: {per_prefix['train_samples']:,} training samples; "
            f"{args.world} rank(s), global batch {args.batch}, max_history {args.history}, d 64, K 4, "
            "1,024 shared negatives, score-bias positions",
            "",
            *rows,
            "",
            f"- sequence / per-prefix: targets/s x{sequence['targets_per_s'] / per_prefix['targets_per_s']:.1f}",
        ]
    )
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_provenance(out)
    print(text)


if __name__ == "__main__":
    main()
