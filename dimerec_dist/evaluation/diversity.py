"""Diversity of top-k lists on data whose items have categories (the synthetic logs).

distinct categories: how many categories a user's top-k covers, averaged over users;
intra-list distance (ILD): the share of item pairs in a top-k from different categories
(0: one category; 1: all different), averaged over users.
"""

from __future__ import annotations

import numpy as np


def diversity(topk: np.ndarray, categories: np.ndarray) -> dict[str, float]:
    """Mean distinct categories and ILD of top-k lists (users x k dense item ids)."""
    k = topk.shape[1]
    cats = categories[topk]  # users x k
    counts = [np.unique(row, return_counts=True)[1] for row in cats]
    distinct = [len(c) for c in counts]
    same_pairs = [(c * (c - 1)).sum() / 2 for c in counts]
    pairs = k * (k - 1) / 2
    ild = [1.0 - same / pairs for same in same_pairs] if pairs else [0.0] * len(cats)
    return {
        f"categories@{k}": float(np.mean(distinct)) if len(cats) else 0.0,
        f"ild@{k}": float(np.mean(ild)) if len(cats) else 0.0,
    }
