"""Kill one rank mid-run, let torchrun restart the job, and plot its loss beside an uninterrupted run.

    python tools/plot_resume.py --data runs/quickstart/data --out docs/resume_loss.png [--steps 300] [--kill-at 170]

Both runs: 2 ranks, the same config, a checkpoint every 50 steps. The second run's rank 1
is SIGKILLed at `--kill-at` (first attempt only); torchrun (--max-restarts=1) restarts
the job, which resumes from the newest complete checkpoint. The figure shows both loss
curves and where the kill and the resume happened; the maximum difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from provenance import write_provenance  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]


def run(data: str, run_dir: Path, steps: int, faults: list[str]) -> dict[int, float]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        str(REPO / "tools" / "faulty_train.py"),
        *faults,
        "--run-dir",
        str(run_dir),
        "data.source=prepared",
        f"data.path={data}",
        f"train.max_steps={steps}",
        "train.checkpoint_every=50",
        "train.log_every=1",
        "train.eval_every_epochs=0",
        "eval.at_end=false",
        "data.streams=2",
    ]
    subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    losses: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss/total" in row:
            losses[row["step"]] = row["loss/total"]  # the resumed attempt rewrites the steps it repeats
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kill-at", type=int, default=170)
    parser.add_argument("--raw", type=Path, default=None, help="write results.json and provenance.json here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args.data, Path(tmp) / "plain", args.steps, [])
        killed = run(
            args.data, Path(tmp) / "killed", args.steps, ["--kill-at-step", str(args.kill_at), "--kill-rank", "1"]
        )
    resumed_at = (args.kill_at // 50) * 50
    steps = sorted(plain)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(steps, [plain[s] for s in steps], lw=2.5, alpha=0.5, label="uninterrupted")
    ax.plot(steps, [killed[s] for s in steps], lw=1, color="black", label="killed, restarted, resumed")
    ax.axvline(args.kill_at, color="red", ls="--", lw=1, label=f"rank 1 SIGKILLed (step {args.kill_at})")
    ax.axvline(resumed_at, color="green", ls=":", lw=1, label=f"resumed from checkpoint (step {resumed_at})")
    ax.set_xlabel("step")
    ax.set_ylabel("L_gem + lambda L_recon + mu L_ssm")
    ax.set_title("Kill-and-resume: 2 ranks, gloo, CPU")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    difference = max(abs(plain[s] - killed[s]) for s in steps)
    summary = {"steps": len(steps), "max_abs_loss_difference": difference, "figure": str(args.out)}
    print(json.dumps(summary))
    if args.raw is not None:  # the figure's numbers, and where they came from
        args.raw.mkdir(parents=True, exist_ok=True)
        losses = {"uninterrupted": [plain[s] for s in steps], "killed": [killed[s] for s in steps]}
        (args.raw / "results.json").write_text(json.dumps({**summary, "steps_logged": steps, **losses}) + "\n")
        write_provenance(args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
