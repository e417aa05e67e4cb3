"""Render finished runs as a Markdown table: one row per run, test HR/NDCG@10/20/50.

    python tools/results_table.py runs/beauty runs/beauty-gem ... > table.md

Reads each run's final.json and config.yaml; rows are labelled by the run directory's
name. The popularity baseline of the first run of each dataset is added beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

KS = (10, 20, 50)


def row(label: str, metrics: dict) -> str:
    cells = [f"{metrics[f'{m}@{k}']:.4f}" for k in KS for m in ("hr", "ndcg")]
    return f"| {label} | " + " | ".join(cells) + " |"


def render(run_dirs: list[Path]) -> str:
    header = "| run | " + " | ".join(f"{m.upper()}@{k}" for k in KS for m in ("HR", "NDCG")) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(KS))]
    seen_data = set()
    for run_dir in run_dirs:
        final = json.loads((run_dir / "final.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        data = config["data"].get("raw_path") or config["data"].get("path") or "synthetic"
        if data not in seen_data:
            seen_data.add(data)
            lines.append(row(f"popularity ({Path(data).name})", final["popularity"]["test"]))
        lines.append(row(run_dir.name, final["test"]))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    sys.stdout.write(render(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
