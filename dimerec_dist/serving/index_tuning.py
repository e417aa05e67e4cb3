"""An approximate index's search setting chosen by the recall it must reach, and what it reached.

    tuned = tune_index(staging, "hnsw", valid_users, target=0.95)   # efSearch, the smallest that reaches it
    measured = measure_index(staging, test_users)                   # recall@50 and ms per query, on other users

Recall@50 is the share of exact search's top-50 the index returns, per user, averaged;
exact search is the bundle's own (serving/exact_search.py), on the same queries. The
setting is tried from cheap to costly (HNSW's efSearch, IVF's nprobe) on the validation
users and the first that reaches the target is written into the index file; the recall
and latency reported in the manifest are then measured on the test users, which the
choice never saw. A target no setting reaches is an error naming the best reached.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dimerec_dist.config import ConfigError
from dimerec_dist.data.samples import EvaluationUsers

SEARCH_SETTINGS = {  # index kind: (setting, values from cheap to costly)
    "hnsw": ("efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]),
    "ivf": ("nprobe", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]),
}


def set_search(index, kind: str, value: int) -> None:
    import faiss

    if kind == "hnsw":
        index.hnsw.efSearch = value
    else:
        faiss.extract_index_ivf(index).nprobe = value


def _recommender(staging: Path):
    from dimerec_dist.serving.bundle import Bundle
    from dimerec_dist.serving.recommender import Recommender

    return Recommender(Bundle(staging, verify=False))  # written by this job a moment ago; the server verifies it


def _requests(recommender, users: EvaluationUsers, limit: int) -> list:
    from dimerec_dist.serving.recommender import Request

    count = min(limit, len(users))
    histories, _, _ = users.batch(np.arange(count))
    raw_ids = recommender.bundle.raw_ids
    return [
        Request(history=raw_ids(row[:length]), k=50, user=int(user))
        for row, length, user in zip(histories.ids, histories.lengths, users.users[:count])
    ]


def _answers(recommender, requests: list, exact: bool) -> tuple[list[list[str]], float]:
    """Each request's items, and the seconds per query."""
    from dimerec_dist.serving.recommender import Request

    started = time.time()
    answers = [r.items for r in recommender.recommend([Request(**{**q.__dict__, "exact": exact}) for q in requests])]
    return answers, (time.time() - started) / max(len(requests), 1)


def _recall(approximate: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approximate, exact)]))


def tune_index(staging: Path, kind: str, users: EvaluationUsers, target: float, limit: int = 1000) -> dict:
    """The cheapest search setting whose recall@50 on `users` reaches `target`, written into the
    bundle's index file; what was tried, for the manifest."""
    import faiss

    recommender = _recommender(staging)
    requests = _requests(recommender, users, limit)
    exact, _ = _answers(recommender, requests, exact=True)
    setting, values = SEARCH_SETTINGS[kind]
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(recommender.index).nlist
        values = sorted({min(v, nlist) for v in values})  # nlist lists: every list is exhaustive search
    tried = []
    for value in values:
        set_search(recommender.index, kind, value)
        answers, seconds = _answers(recommender, requests, exact=False)
        tried.append(
            {setting: value, "recall@50": round(_recall(answers, exact), 4), "ms_per_query": round(1e3 * seconds, 3)}
        )
        if tried[-1]["recall@50"] >= target:
            break
    else:
        best = max(tried, key=lambda t: t["recall@50"])
        raise ConfigError(
            f"--recall {target}: the {kind} index reaches at most recall@50 {best['recall@50']} on {len(requests)} "
            f"validation users ({setting}={best[setting]}); ask for less, or export with another --index"
        )
    faiss.write_index(recommender.index, str(staging / "index.faiss"))
    return {"params": {setting: tried[-1][setting]}, "target_recall@50": target, "tuned_on_valid": tried}


def measure_index(staging: Path, users: EvaluationUsers, limit: int = 1000) -> dict:
    """recall@50 of the index against exact search, and the time per query of each, on `users`."""
    recommender = _recommender(staging)
    requests = _requests(recommender, users, limit)
    exact, exact_seconds = _answers(recommender, requests, exact=True)
    approximate, index_seconds = _answers(recommender, requests, exact=False)
    return {
        "recall@50": round(_recall(approximate, exact), 4),
        "queries": len(requests),
        "exact_ms_per_query": round(1e3 * exact_seconds, 3),
        "index_ms_per_query": round(1e3 * index_seconds, 3),
    }
