"""What a run reports from its model: valid and test metrics with the popularity baseline
beside them, the test pass's time per user, diversity where items have categories; and the
validation score that picks the best epoch.
"""

from __future__ import annotations

import time

import numpy as np

from dimerec_dist.config import JobConfig
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.distributed.table_shards import scoring_shards
from dimerec_dist.evaluation.diversity import diversity
from dimerec_dist.evaluation.ranking import SplitEvaluation, evaluate_split
from dimerec_dist.runtime.process_group import DistContext


def evaluate_users(
    model, shards, config: JobConfig, ctx: DistContext, users: EvaluationUsers, popularity: np.ndarray | None = None
) -> SplitEvaluation:
    """Full-catalog top-k for `users` with the job's evaluation settings."""
    return evaluate_split(
        model.module,
        shards,
        users,
        ctx,
        dim=config.model.embedding_dim,
        ks=config.eval.ks,
        batch_size=config.eval.batch_size,
        exclude_seen=config.eval.exclude_seen,
        query_mode=config.query_mode(),
        cosine=config.model.cosine_logits,
        sample_steps=config.model.sample_steps,
        seed=config.seed,
        popularity=popularity,
    )


def selection_key(config: JobConfig) -> str:
    """The validation metric that picks the best epoch: NDCG@10, or at the first cut-off asked."""
    k = 10 if 10 in config.eval.ks else config.eval.ks[0]
    return f"ndcg@{k}"


def final_metrics(
    model,
    shards,
    config: JobConfig,
    ctx: DistContext,
    valid: EvaluationUsers,
    test: EvaluationUsers,
    popularity: np.ndarray,
    categories: np.ndarray | None = None,
) -> tuple[dict, SplitEvaluation]:
    """Valid and test metrics (and popularity's); the test pass's time per user (queries and
    full-catalog top-k, all ranks together); diversity where items have categories. Also the
    test evaluation itself (its top-k lists)."""
    # Laid out for scoring once for both splits (a column-wise table is re-laid, not twice).
    shards = scoring_shards(shards, model.module.num_items + 1, config.model.embedding_dim, ctx.device)
    valid_result = evaluate_users(model, shards, config, ctx, valid, popularity)
    started = time.time()
    test_result = evaluate_users(model, shards, config, ctx, test, popularity)
    seconds = time.time() - started
    final = {
        "valid": valid_result.metrics,
        "test": test_result.metrics,
        "popularity": {"valid": valid_result.popularity, "test": test_result.popularity},
        "latency": {"test_users": len(test), "ms_per_user": 1e3 * seconds / max(len(test), 1), "ranks": ctx.world_size},
        "protocol": {
            "split": config.data.split,
            "ranking": "full catalog",
            "exclude_seen": config.eval.exclude_seen,
            "query": config.query_mode(),
            "sample_steps": config.model.sample_steps,
        },
    }
    if categories is not None:
        final["diversity"] = {
            "test": diversity(test_result.topk, categories),
            "popularity": diversity(test_result.popularity_topk, categories),
        }
    return final, test_result


def format_scores(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())
