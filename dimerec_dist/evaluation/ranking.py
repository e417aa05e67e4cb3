"""Full-catalog evaluation with the item table still sharded.

For each batch of users: every rank computes its users' queries; the queries (and the
items each user has seen) are gathered to all ranks; each rank scores them against the
rows it holds and keeps a local top-k; the local top-k lists are gathered and merged.
No rank ever holds the whole table. Metrics: HR@k and NDCG@k for a single held-out item.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dimerec_dist.data.batch import make_batch
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import PADDING_ID
from dimerec_dist.distributed.collectives import all_gather_cat, all_reduce_max_int
from dimerec_dist.distributed.table_shards import RowShard, scoring_shards
from dimerec_dist.runtime.process_group import DistContext
from dimerec_dist.runtime.random_streams import generator

log = logging.getLogger("dimerec.eval")
ROW_CHUNK = 1 << 14


def score_block(
    queries: torch.Tensor, rows: torch.Tensor, cosine: bool, row_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """(U, Q, d) queries against (R, d) rows -> (U, R): the best of each user's Q queries.

    One matrix product reading each row once; each row's score is then multiplied by its scale:
    for cosine, 1 / ||row|| (row_scales; computed here unless given, as serving gives it once for
    the whole table), so no normalised copy of the rows is made. Rows stored in fp16 or int8 are
    scored in the queries' fp32. Evaluation and serving both score with this function, which is
    what keeps their top-k identical."""
    if cosine:
        queries = F.normalize(queries, dim=-1)
        if row_scale is None:
            row_scale = row_scales(rows, cosine)
    users, per_user, dim = queries.shape
    scores = torch.mm(queries.reshape(-1, dim), rows.to(queries.dtype).T)
    if row_scale is not None:
        scores.mul_(row_scale)  # in place: the product is ours, and a second (U x R) copy costs a pass
    return scores if per_user == 1 else scores.view(users, per_user, -1).amax(dim=1)


def row_scales(rows: torch.Tensor, cosine: bool) -> torch.Tensor | None:
    """What score_block multiplies each row's score by: 1 / ||row|| for cosine scores (as
    F.normalize, with its floor on the norm), nothing for inner products."""
    if not cosine:
        return None
    return 1.0 / torch.linalg.vector_norm(rows.float(), dim=-1).clamp_min(1e-12)


def mask_rows(scores: torch.Tensor, first_row: int, seen: torch.Tensor | None) -> torch.Tensor:
    """-inf on the padding row and, where given, on each user's seen items (padded with 0 in `seen`)."""
    rows = scores.shape[1]
    if first_row <= PADDING_ID < first_row + rows:
        scores[:, PADDING_ID - first_row] = -math.inf
    if seen is not None:
        local = seen - first_row
        inside = (local >= 0) & (local < rows) & (seen != PADDING_ID)
        user_index = torch.arange(seen.shape[0], device=seen.device).unsqueeze(1).expand_as(seen)
        scores[user_index[inside], local[inside]] = -math.inf
    return scores


def merge_topk(values: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of candidate lists (U, C), ties broken by the smaller item id so any sharding agrees."""
    order = torch.argsort(ids, dim=1, stable=True)
    values, ids = values.gather(1, order), ids.gather(1, order)
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), ids.gather(1, order)


def local_topk(
    shards: list[RowShard], k: int, seen: torch.Tensor | None, score: callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the rows this rank holds, in row chunks so the score matrix stays small."""
    best_values, best_ids = None, None
    for shard in shards:
        for start in range(0, shard.weight.shape[0], ROW_CHUNK):
            rows = shard.weight[start : start + ROW_CHUNK]
            first = shard.row_offset + start
            scores = mask_rows(score(rows, first), first, seen)
            take = min(k, scores.shape[1])
            values, index = torch.topk(scores, take, dim=1)
            ids = index + first
            if best_values is not None:
                values, ids = torch.cat([best_values, values], 1), torch.cat([best_ids, ids], 1)
            best_values, best_ids = merge_topk(values, ids, k)
    return best_values, best_ids


def gathered_topk(
    shards: list[RowShard],
    k: int,
    seen: torch.Tensor | None,
    score: callable,
    users: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Item ids (U, k) of the global top-k: local top-k on every rank, gathered and merged.
    `dtype` is the scores' type, which every rank must agree on (even one holding no rows)."""
    if shards:
        values, ids = local_topk(shards, k, seen, score)
        values = values.to(dtype)
    else:
        values = torch.empty(users, 0, dtype=dtype, device=device)
        ids = torch.empty(users, 0, dtype=torch.long, device=device)
    # Ranks holding fewer than k rows (or none) pad with -inf so every rank sends the same shape.
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, torch.full((users, pad), -math.inf, dtype=values.dtype, device=device)], 1)
        ids = torch.cat([ids, torch.full((users, pad), torch.iinfo(torch.long).max, device=device)], 1)
    gathered_values = all_gather_cat(values.unsqueeze(0))
    gathered_ids = all_gather_cat(ids.unsqueeze(0))
    values = gathered_values.permute(1, 0, 2).reshape(users, -1)
    ids = gathered_ids.permute(1, 0, 2).reshape(users, -1)
    return merge_topk(values, ids, k)[1]


def popularity_scores(counts: np.ndarray) -> np.ndarray:
    """Distinct float64 scores ranking items by count, ties broken by the smaller id, so the
    popularity baseline's top-k is the same on any sharding (raw counts tie everywhere)."""
    order = np.lexsort((np.arange(len(counts)), -counts.astype(np.int64)))
    scores = np.empty(len(counts), np.float64)
    scores[order] = -np.arange(len(counts), dtype=np.float64)
    return scores


def user_starts(user_ids: np.ndarray, dim: int, seed: int) -> torch.Tensor:
    """A fixed random x_T per user, (U, d)."""
    return torch.stack([torch.randn(dim, generator=generator(seed, "start", int(u))) for u in user_ids])


def ranking_metrics(topk: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR@k and NDCG@k for one held-out target per user."""
    hit_rank = np.full(len(targets), -1)
    rows, cols = np.nonzero(topk == targets[:, None])
    hit_rank[rows] = cols
    out = {}
    for k in ks:
        hit = (hit_rank >= 0) & (hit_rank < k)
        out[f"hr@{k}"] = float(hit.mean()) if len(targets) else 0.0
        gain = np.where(hit, 1.0 / np.log2(np.maximum(hit_rank, 0) + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(targets) else 0.0
    return out


def multi_target_metrics(
    topk: np.ndarray, target_items: np.ndarray, target_offsets: np.ndarray, ks: list[int]
) -> dict[str, float]:
    """HR@k (any target in the top-k), Recall@k (share of the targets found) and NDCG@k
    (DCG of the hits over the ideal DCG of min(k, targets) hits) for several targets per
    user, as ComiRec's user-split protocol reports them."""
    users = len(target_offsets) - 1
    counts = np.diff(target_offsets)
    owner = np.repeat(np.arange(users), counts)
    # hit[u, r]: the item at rank r of user u is one of u's targets, by one membership test on
    # (user, item) keys. Ids above every target (padding of short lists included) cannot hit.
    width = int(target_items.max(initial=0)) + 1
    ranked = np.where(topk < width, topk, 0)  # 0 is never a target
    hit = np.isin(
        np.arange(users, dtype=np.int64)[:, None] * width + ranked, owner.astype(np.int64) * width + target_items
    )
    gains = 1.0 / np.log2(np.arange(topk.shape[1]) + 2.0)
    out = {}
    for k in ks:
        found = hit[:, :k].sum(axis=1)
        ideal = np.cumsum(gains)[np.minimum(counts, k) - 1]
        out[f"hr@{k}"] = float((found > 0).mean()) if users else 0.0
        out[f"recall@{k}"] = float((found / counts).mean()) if users else 0.0
        out[f"ndcg@{k}"] = float(((hit[:, :k] * gains[:k]).sum(axis=1) / ideal).mean()) if users else 0.0
    return out


def split_metrics(topk: np.ndarray, users: EvaluationUsers, ks: list[int]) -> dict[str, float]:
    """The split's metrics from top-k lists in split order: one target, or several."""
    if users.multi_target:
        return multi_target_metrics(topk, users.target_items, users.target_offsets, ks)
    return ranking_metrics(topk, users.targets, ks)


@dataclass
class SplitEvaluation:
    """A split's metrics and top-k item ids (users in split order), for the model and popularity."""

    metrics: dict[str, float]
    topk: np.ndarray
    popularity: dict[str, float] | None = None
    popularity_topk: np.ndarray | None = None


def _rank_rows(count: int, ctx: DistContext) -> tuple[np.ndarray, np.ndarray]:
    """This rank's contiguous share of `count` users, padded by repeating its last row so every
    rank runs the same number of collective steps; the second array marks the real rows."""
    per_rank = math.ceil(count / ctx.world_size)
    rows = np.arange(ctx.rank * per_rank, min(count, (ctx.rank + 1) * per_rank))
    real = np.ones(per_rank, dtype=bool)
    real[len(rows) :] = False
    if len(rows) < per_rank:
        filler = rows[-1] if len(rows) else 0
        rows = np.concatenate([rows, np.full(per_rank - len(rows), filler)])
    return rows, real


@torch.no_grad()
def evaluate_split(
    model,
    shards: list[RowShard],
    users: EvaluationUsers,
    ctx: DistContext,
    *,
    dim: int,
    ks: list[int],
    batch_size: int,
    exclude_seen: bool,
    query_mode: str,
    cosine: bool,
    sample_steps: int | None,
    seed: int,
    popularity: np.ndarray | None = None,
    progress_every: float = 30.0,
) -> SplitEvaluation:
    """Metrics and top-k lists of the model (and of the popularity ranking, if counts are given) on one split.
    `shards` may be the table's raw pieces; they are laid out as full rows first (scoring_shards),
    which costs nothing when they already are."""
    k = max(ks)
    shards = scoring_shards(shards, model.num_items + 1, dim, ctx.device)
    rows, real = _rank_rows(len(users), ctx)
    num_batches = all_reduce_max_int(math.ceil(len(rows) / batch_size), ctx.device)
    pop_tensor = None if popularity is None else torch.as_tensor(popularity_scores(popularity), device=ctx.device)
    all_topk, all_pop_topk, all_real = [], [], []
    started = last_log = time.time()
    for index in range(num_batches):
        chunk = rows[index * batch_size : (index + 1) * batch_size]
        chunk_real = real[index * batch_size : (index + 1) * batch_size]
        history, seen, targets = users.batch(chunk)
        batch = make_batch(history, targets, np.zeros(0, np.int64)).to(ctx.device)
        # x_T depends on (seed, user) only, so any sharding or batching gives the same deterministic queries.
        user_ids = users.users[chunk]
        start = user_starts(user_ids, dim, seed).to(ctx.device)
        reverse = generator(seed, "reverse", int(user_ids[0]), device=ctx.device)
        queries = model.queries(batch, query_mode, steps=sample_steps, generator=reverse, start=start)
        gathered_queries = all_gather_cat(queries)
        seen_tensor = None
        if exclude_seen:
            width = all_reduce_max_int(max(len(s) for s in seen), ctx.device)
            padded = np.zeros((len(seen), width), np.int64)
            for r, items in enumerate(seen):
                padded[r, : len(items)] = items
            seen_tensor = all_gather_cat(torch.from_numpy(padded).to(ctx.device))
        count = gathered_queries.shape[0]
        topk = gathered_topk(shards, k, seen_tensor, _query_scores(gathered_queries, cosine), count, ctx.device)
        all_topk.append(topk.cpu().numpy())
        if pop_tensor is not None:
            all_pop_topk.append(
                gathered_topk(
                    shards,
                    k,
                    seen_tensor,
                    _popularity_scores(pop_tensor, count),
                    count,
                    ctx.device,
                    dtype=torch.float64,
                )
                .cpu()
                .numpy()
            )
        all_real.append(all_gather_cat(torch.from_numpy(chunk_real).to(ctx.device)).cpu().numpy())
        if ctx.is_main and time.time() - last_log > progress_every:
            last_log = time.time()
            rate = (index + 1) / (last_log - started)
            log.info(
                "eval %d/%d batches, %.1f batches/s, ETA %.0fs",
                index + 1,
                num_batches,
                rate,
                (num_batches - index - 1) / rate,
            )
    # Rows come back grouped per batch as [rank 0 chunk, rank 1 chunk, ...]: reorder to split order.
    order = _gathered_order(len(rows), batch_size, num_batches, ctx.world_size)
    real_mask = np.concatenate(all_real)[order]
    topk = np.concatenate(all_topk)[order][real_mask]  # every user of the split, in split order
    result = SplitEvaluation(split_metrics(topk, users, ks), topk)
    if all_pop_topk:
        result.popularity_topk = np.concatenate(all_pop_topk)[order][real_mask]
        result.popularity = split_metrics(result.popularity_topk, users, ks)
    return result


def _query_scores(queries: torch.Tensor, cosine: bool):
    """score(rows, first_row) of every user's queries against a block of rows."""
    return lambda rows, first: score_block(queries, rows, cosine)


def _popularity_scores(popularity: torch.Tensor, users: int):
    """score(rows, first_row): the popularity score of each row, the same for every user."""
    return lambda rows, first: popularity[first : first + rows.shape[0]].unsqueeze(0).expand(users, -1).clone()


def _gathered_order(per_rank: int, batch_size: int, num_batches: int, world: int) -> np.ndarray:
    """Index into the concatenated gathered rows that restores rank-major (split) order."""
    positions = []
    offset = 0
    for index in range(num_batches):
        size = max(0, min(batch_size, per_rank - index * batch_size))
        for rank in range(world):
            positions.append((rank, index * batch_size + np.arange(size), offset + rank * size + np.arange(size)))
        offset += world * size
    ordered = sorted(positions, key=lambda item: item[0])
    return np.concatenate([p[2] for p in ordered]) if ordered else np.zeros(0, np.int64)
