"""Sharded top-k pieces against brute force, and the metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from dimerec_dist.distributed.table_shards import RowShard
from dimerec_dist.evaluation import ranking as evaluate
from dimerec_dist.evaluation.ranking import local_topk, mask_rows, merge_topk, ranking_metrics, score_block


def test_metrics_for_hits_at_known_ranks():
    topk = np.array([[5, 6, 7], [7, 5, 6], [1, 2, 3]])
    targets = np.array([5, 6, 9])
    out = ranking_metrics(topk, targets, [1, 3])
    assert out["hr@1"] == pytest.approx(1 / 3)
    assert out["hr@3"] == pytest.approx(2 / 3)
    assert out["ndcg@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)


def test_merge_breaks_ties_by_smaller_id():
    values = torch.tensor([[1.0, 2.0, 2.0, 0.5]])
    ids = torch.tensor([[4, 9, 3, 1]])
    merged_values, merged_ids = merge_topk(values, ids, 3)
    assert merged_ids.tolist() == [[3, 9, 4]] and merged_values.tolist() == [[2.0, 2.0, 1.0]]


def test_mask_rows_blocks_padding_and_seen_items_inside_the_shard_only():
    scores = torch.zeros(2, 4)  # rows 0..3 of the table
    seen = torch.tensor([[2, 7, 0], [3, 0, 0]])  # 0 pads the seen lists; 7 lives on another shard
    out = mask_rows(scores, 0, seen)
    assert torch.isinf(out[:, 0]).all(), "the padding row is never recommended"
    assert torch.isinf(out[0, 2]) and torch.isinf(out[1, 3]) and not torch.isinf(out[0, 3])
    shifted = mask_rows(torch.zeros(2, 4), 5, seen)  # rows 5..8
    assert torch.isinf(shifted[0, 2]) and torch.isinf(shifted).sum() == 1


@pytest.mark.parametrize("chunk", [3, 7, 1 << 14])
@pytest.mark.parametrize("cosine", [True, False])
def test_local_topk_over_shards_and_chunks_equals_brute_force(monkeypatch, chunk, cosine):
    monkeypatch.setattr(evaluate, "ROW_CHUNK", chunk)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(41, 8, generator=gen)
    queries = torch.randn(5, 2, 8, generator=gen)
    seen = torch.tensor([[1, 2, 3], [4, 0, 0], [40, 39, 0], [0, 0, 0], [10, 20, 30]])
    shards = [RowShard(0, 0, table[:13]), RowShard(13, 0, table[13:30]), RowShard(30, 0, table[30:])]
    _, ids = local_topk(shards, 6, seen, lambda rows, first: score_block(queries, rows, cosine))
    full = mask_rows(score_block(queries, table, cosine), 0, seen)
    expected = torch.topk(full, 6, dim=1).indices
    assert torch.equal(ids, expected)
