"""What predicts a prepared log's held-out targets, before any model is trained.

    python tools/target_structure.py --data runs/experiments/main/short_video/data [--split test] [--k 10]

Prints (and with --out writes) for a leave-one-out split:
- the share of targets the user had already seen: under the seen-excluded protocol no method can
  ever hit them, so 1 - this share caps HR@k for every method;
- on logs with item categories (dimerec-synth's): the share of targets in the category of the
  history's last item, in its most frequent category, and in any of its categories;
- two rankings that learn nothing, scored like the trainer's evaluation (full catalog, seen items
  excluded): popularity, and the last item's category (its most popular unseen items, then the
  rest by popularity). When the second comes close to the learned models, the log rewards
  recency more than a long-term profile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split  # noqa: E402
from dimerec_dist.data.synth import item_categories  # noqa: E402
from dimerec_dist.evaluation.ranking import popularity_scores, ranking_metrics  # noqa: E402


def category_shares(histories: list[np.ndarray], targets: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    """Shares of targets whose category is the last history item's, the history's most frequent, or any of it."""
    last = most = anywhere = 0
    for history, target in zip(histories, targets):
        cats = categories[history]
        wanted = categories[target]
        last += cats[-1] == wanted
        values, counts = np.unique(cats, return_counts=True)
        most += values[counts.argmax()] == wanted
        anywhere += wanted in values
    n = max(len(targets), 1)
    return {
        "in_last_item_category": last / n,
        "in_most_frequent_category": most / n,
        "in_any_history_category": anywhere / n,
    }


def heuristic_topk(
    histories: list[np.ndarray], popularity: np.ndarray, k: int, categories: np.ndarray | None = None
) -> np.ndarray:
    """(users, k) dense item ids: the popularity ranking, or with `categories` the last history
    item's category first (by popularity), then everything else by popularity; seen items never
    ranked; padded with 0 (never a target) when a catalog has fewer than k unseen items.
    Ties break as the trainer's popularity baseline breaks them (evaluate.popularity_scores)."""
    order = np.argsort(-popularity_scores(popularity), kind="stable")
    order = order[order != 0]  # row 0 is padding
    in_category: dict[int, list[int]] = {}
    if categories is not None:
        ordered = categories[order]
        in_category = {int(c): order[ordered == c].tolist() for c in np.unique(ordered)}
    everything = order.tolist()
    topk = np.zeros((len(histories), k), np.int64)
    for row, history in enumerate(histories):
        seen = set(history.tolist())
        first = in_category.get(int(categories[history[-1]]), []) if categories is not None else []
        ranked: list[int] = []
        for item in itertools.chain(first, everything):  # stops after k: most users need a few items
            if item not in seen and item not in ranked:
                ranked.append(item)
                if len(ranked) == k:
                    break
        topk[row, : len(ranked)] = ranked
    return topk


def target_structure(data: Path, split: str = "test", k: int = 10, synth_dir: Path | None = None) -> dict:
    manifest = Manifest.load(data)
    if manifest.protocol != "leave-one-out":
        raise DataError(f"{data}: split protocol {manifest.protocol!r}; this tool reads leave-one-out targets only")
    table = read_split(manifest, split)
    histories = [np.asarray(h, np.int64) for h in table.column("history").to_pylist()]
    targets = table.column("target").to_numpy()
    keep = [i for i, h in enumerate(histories) if len(h)]  # a user with no history has no last item
    histories, targets = [histories[i] for i in keep], targets[keep]
    popularity = np.concatenate([[0], read_items(manifest).column("popularity").to_numpy()])  # ids start at 1
    seen = float(np.mean([t in set(h.tolist()) for h, t in zip(histories, targets)])) if len(targets) else 0.0
    result = {
        "data": str(data),
        "split": split,
        "users": len(targets),
        "target_already_seen": seen,
        "popularity": ranking_metrics(heuristic_topk(histories, popularity, k), targets, [k]),
    }
    categories = item_categories(manifest, synth_dir)
    if categories is not None:
        result.update(category_shares(histories, targets, categories))
        result["last_item_category"] = ranking_metrics(
            heuristic_topk(histories, popularity, k, categories), targets, [k]
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset (dimerec-prepare's output)")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--synth", type=Path, help="dimerec-synth's output, for item categories (default: DATA/raw)")
    parser.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args()
    try:
        result = target_structure(args.data, args.split, args.k, args.synth)
    except DataError as exc:
        print(f"target_structure: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
