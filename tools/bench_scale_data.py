"""Synthesise and prepare a large short-video log; report events/s and prepare's peak RSS.

    python tools/bench_scale_data.py --out runs/scale --events 100000000 --users 1000000 --items 1000000

Runs `dimerec-synth` (Ray tasks, `--workers`) and then `dimerec-prepare --format events`,
each as its own process watched by a small wrapper, so each peak RSS is that command's
own (for synth: the driver; Ray workers are not its children). Writes OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from provenance import write_provenance  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]
WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def timed(command: list[str]) -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    return {"seconds": round(time.time() - started, 1), "peak_rss_gb": round(peak / 2**20, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--events", type=int, default=100_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="ray")
    parser.add_argument("--reuse-log", action="store_true", help="keep OUT/raw from an earlier run; prepare only")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    raw, prepared = args.out / "raw", args.out / "prepared"
    if args.reuse_log and (raw / "synth.json").is_file():
        synth = json.loads((args.out / "bench.json").read_text())["synth"]
    else:
        synth = timed(
            [
                str(bin_dir / "dimerec-synth"),
                "--out",
                str(raw),
                "--users",
                str(args.users),
                "--items",
                str(args.items),
                "--events",
                str(args.events),
                "--categories",
                "1000",
                "--workers",
                str(args.workers),
                "--backend",
                args.backend,
            ]
        )
    events = json.loads((raw / "synth.json").read_text())["events"]
    synth["events_per_s"] = round(events / synth["seconds"])
    if prepared.exists():
        shutil.rmtree(prepared)
    prepare = timed(
        [str(bin_dir / "dimerec-prepare"), "--format", "events", "--input", str(raw / "events"), "--out", str(prepared)]
    )
    prepare["events_per_s"] = round(events / prepare["seconds"])
    manifest = json.loads((prepared / "manifest.json").read_text())
    report = {
        "events": events,
        "users": args.users,
        "items": args.items,
        "workers": args.workers,
        "backend": args.backend,
        "synth": synth,
        "prepare": prepare,
        "prepared_counts": manifest["counts"],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    write_provenance(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
