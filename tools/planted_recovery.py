"""Does a model trained on a synthetic log recover the interests planted in it?

    python tools/planted_recovery.py --run-dir runs/quickstart [--synth DIR]

For every test user: the share of its top-50 recommendations whose category is one of
the user's planted interests (at the end of its log), for the model and for the
popularity ranking, next to HR@50; also how many of the planted interests appear among
the top-50's categories, and how many distinct categories the top-50 spans. Writes
run_dir/planted.json. `--synth` defaults to the raw log the trainer made (<data>/raw).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dimerec_dist.config import ConfigError
from dimerec_dist.data.schema import DataError, read_split
from dimerec_dist.data.source import dataset_path
from dimerec_dist.data.synth import item_categories
from dimerec_dist.evaluation.scores import evaluate_users
from dimerec_dist.runtime.command import run_command
from dimerec_dist.training.checkpoint import CheckpointError
from dimerec_dist.training.saved_run import load_saved_run


def category_scores(topk: np.ndarray, categories: np.ndarray, planted: list[set[int]]) -> dict[str, float]:
    rec_categories = categories[topk]  # (users, k)
    match = np.array([np.isin(row, list(p)).mean() for row, p in zip(rec_categories, planted)])
    covered = np.array([len(p & set(row.tolist())) / len(p) for row, p in zip(rec_categories, planted)])
    distinct = np.array([len(set(row.tolist())) for row in rec_categories])
    return {
        "planted_category_share": float(match.mean()),
        "planted_interest_coverage": float(covered.mean()),
        "distinct_categories": float(distinct.mean()),
    }


def report(run_dir: Path, synth: Path | None) -> None:
    loaded = load_saved_run(run_dir, ["eval.ks=50"])  # the run's evaluation settings, top-50 lists
    synth = synth or dataset_path(loaded.config.data, run_dir) / "raw"
    users = loaded.data.test
    result = evaluate_users(loaded.model, loaded.shards, loaded.config, loaded.ctx, users, loaded.data.popularity)
    if loaded.ctx.is_main:
        # Dense ids -> the generator's ids (raw ids are its integers, as strings) -> categories and interests.
        categories = item_categories(loaded.manifest, synth)
        train = read_split(loaded.manifest, "train")
        raw_user = dict(zip(train.column("user").to_pylist(), map(int, train.column("raw_user").to_pylist())))
        interests = pq.read_table(synth / "interests.parquet")
        planted_of = dict(zip(interests.column("user").to_pylist(), interests.column("categories").to_pylist()))
        planted = [set(planted_of[raw_user[int(u)]]) for u in users.users]
        result_json = {
            "users": len(users),
            "model": {"hr@50": result.metrics["hr@50"], **category_scores(result.topk, categories, planted)},
            "popularity": {
                "hr@50": result.popularity["hr@50"],
                **category_scores(result.popularity_topk, categories, planted),
            },
        }
        result_json["hr@50_ratio"] = result_json["model"]["hr@50"] / max(result_json["popularity"]["hr@50"], 1e-12)
        (run_dir / "planted.json").write_text(json.dumps(result_json, indent=2) + "\n")
        print(json.dumps(result_json, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--synth", type=Path, default=None)
    args = parser.parse_args()
    return run_command(
        "planted_recovery", lambda: report(args.run_dir, args.synth), (ConfigError, DataError, CheckpointError)
    )


if __name__ == "__main__":
    sys.exit(main())
