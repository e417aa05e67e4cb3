"""Recommendations from a bundle: raw item ids in, raw item ids and scores out.

Exact search scores every row of the memory-mapped table in large blocks (exact_search.py)
with the evaluation's own scoring, masking and tie-break by the smaller id, so its top-k
equals dimerec-eval's for the same history and x_T.
Approximate search asks the bundle's faiss index for more than k and drops seen items.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml

from dimerec_dist.data.samples import window
from dimerec_dist.evaluation.ranking import popularity_scores, user_starts
from dimerec_dist.serving.bundle import Bundle, BundleError
from dimerec_dist.serving.exact_search import ExactSearch
from dimerec_dist.serving.tower import history_start, load_tower


class RequestError(ValueError):
    """A request the client must fix (the server answers 400 with the message)."""


@dataclass
class Request:
    history: list  # raw item ids, oldest first
    k: int = 50
    user: int | None = None  # the dataset's user id: reproduces the evaluation's x_T for that user
    exclude_seen: bool = True
    exact: bool | None = None  # None: the index if the bundle has one


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    warnings: dict = field(default_factory=dict)


class Recommender:
    """`exact`: what scores the whole table (topk(queries, seen, k) as ExactSearch's); by default the
    bundle's own parts in this process, in the sharded service the shard deployments (service.py)."""

    def __init__(self, bundle: Bundle, exact=None):
        self.bundle = bundle
        tower = bundle.path(bundle.manifest["tower"])
        try:
            self.tower = load_tower(tower)
        except Exception as exc:  # torch.export raises many kinds for a damaged archive: one line names it
            raise BundleError(
                f"{tower}: cannot load the user tower ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
            ) from None
        config = yaml.safe_load(bundle.path(bundle.manifest["config"]).read_text())
        self.seed = int(config.get("seed", 0))
        self.max_history = bundle.manifest["max_history"]
        self.exact = exact if exact is not None else ExactSearch(bundle.parts, bundle.cosine)
        self.index = None
        if bundle.manifest.get("index"):
            import faiss

            self.index = faiss.read_index(str(bundle.path(bundle.manifest["index"]["file"])))
        self._popularity_order = None
        self._lock = threading.Lock()

    def recommend(self, requests: list[Request]) -> list[Recommendation]:
        """One batch through the tower, then one scoring pass per distinct mode."""
        known, warnings = [], []
        for request in requests:
            ids, unknown = self.bundle.item_ids(request.history)
            known.append(ids)
            warnings.append({"unknown_items": unknown} if unknown else {})
        results: list[Recommendation | None] = [None] * len(requests)
        empty = [i for i, ids in enumerate(known) if len(ids) == 0]
        for i in empty:  # nothing known to condition on: the most popular items, said so
            results[i] = self._popular(
                requests[i].k, {**warnings[i], "empty_history": "no known item in the history: the most popular items"}
            )
        rows = [i for i, ids in enumerate(known) if len(ids)]
        if rows:
            queries = self._queries([known[i] for i in rows], [requests[i].user for i in rows])
            for use_index in (False, True):
                group = [j for j, i in enumerate(rows) if self._use_index(requests[i]) == use_index]
                if not group:
                    continue
                picked = [rows[j] for j in group]
                k = max(requests[i].k for i in picked)
                seen = [known[i] if requests[i].exclude_seen else np.zeros(0, np.int64) for i in picked]
                search = self._approximate if use_index else self._exact
                items, scores = search(queries[group], seen, k)
                for j, i in enumerate(picked):
                    keep = np.isfinite(scores[j])[: requests[i].k]
                    results[i] = Recommendation(
                        self.bundle.raw_ids(items[j][: requests[i].k][keep]),
                        scores[j][: requests[i].k][keep].tolist(),
                        warnings[i],
                    )
        return results

    def check(self, request: Request) -> None:
        """Raise RequestError for what this bundle cannot answer."""
        self._use_index(request)

    def _use_index(self, request: Request) -> bool:
        if request.exact is None:
            return self.index is not None
        if not request.exact and self.index is None:
            raise RequestError("this bundle has no approximate index (export it with --index); ask with exact=true")
        return not request.exact

    @torch.no_grad()
    def _queries(self, histories: list[np.ndarray], users: list[int | None]) -> torch.Tensor:
        """(B, Q, d) queries: the last max_history known items of each history, left-aligned, as the
        evaluation windows them."""
        lengths = np.array([len(h) for h in histories])
        flat = np.concatenate(histories)
        ends = np.cumsum(lengths)
        batch = window(flat, ends - lengths, ends, self.max_history)
        mask = batch.ids != 0
        embedded = np.zeros((*batch.ids.shape, self.bundle.dim), np.float32)
        embedded[mask] = self.bundle.rows(batch.ids[mask])
        starts = torch.stack(
            [
                user_starts(np.array([u]), self.bundle.dim, self.seed)[0]
                if u is not None
                else history_start(h, self.bundle.dim, self.seed)
                for h, u in zip(histories, users)
            ]
        )
        with self._lock:  # one tower call at a time: the exported module is not re-entrant
            return self.tower(torch.from_numpy(embedded), torch.from_numpy(mask), starts)

    def _exact(self, queries: torch.Tensor, seen: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        width = max(1, max(len(s) for s in seen))
        padded = np.zeros((len(seen), width), np.int64)
        for r, items in enumerate(seen):
            padded[r, : len(items)] = items
        values, ids = self.exact.topk(queries, torch.from_numpy(padded), k)
        return ids.numpy(), values.numpy()

    def _approximate(self, queries: torch.Tensor, seen: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = queries.reshape(-1, queries.shape[-1])  # (B * Q, d)
        vectors = torch.nn.functional.normalize(vectors, dim=-1) if self.bundle.cosine else vectors
        fetch = k + max(len(s) for s in seen) + 1  # room for the seen items and the padding row
        scores, ids = self.index.search(np.ascontiguousarray(vectors.numpy(), dtype=np.float32), fetch)
        per_user = queries.shape[1]
        out_ids = np.zeros((len(seen), k), np.int64)
        out_scores = np.full((len(seen), k), -np.inf, np.float32)
        for r, items in enumerate(seen):
            # With several queries per user (GEM), a user's candidates are the union, best score first.
            cand_ids = ids[r * per_user : (r + 1) * per_user].ravel()
            cand_scores = scores[r * per_user : (r + 1) * per_user].ravel()
            order = np.lexsort((cand_ids, -cand_scores))
            chosen, taken = set(items.tolist()) | {0, -1}, 0
            for c in order:
                item = int(cand_ids[c])
                if item in chosen:
                    continue
                chosen.add(item)
                out_ids[r, taken], out_scores[r, taken] = item, cand_scores[c]
                taken += 1
                if taken == k:
                    break
        return out_ids, out_scores

    def _popular(self, k: int, warnings: dict) -> Recommendation:
        if self._popularity_order is None:
            scores = popularity_scores(np.asarray(self.bundle.popularity))
            scores[0] = -np.inf
            self._popularity_order = np.argsort(-scores, kind="stable")
        top = self._popularity_order[: min(k, self.bundle.num_items)]
        return Recommendation(
            self.bundle.raw_ids(top), np.asarray(self.bundle.popularity)[top].astype(float).tolist(), warnings
        )
