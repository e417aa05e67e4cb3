"""serving/exact_search.py against brute force: every stored type, cosine and inner product, a
table in several parts, blocks smaller than a part, seen items and the padding row masked."""

import numpy as np
import pytest
import torch

from dimerec_dist.serving import exact_search
from dimerec_dist.serving.bundle import TablePart
from dimerec_dist.serving.exact_search import ExactSearch


def parts_of(table: np.ndarray, dtype: str, cuts: list[int]) -> list[TablePart]:
    parts = []
    for first, last in zip([0, *cuts], [*cuts, len(table)]):
        rows = table[first:last]
        if dtype == "int8":
            scale = np.abs(rows).max(axis=1) / 127
            parts.append(
                TablePart(first, last, np.round(rows / scale[:, None]).astype(np.int8), scale.astype(np.float32))
            )
        else:
            parts.append(TablePart(first, last, rows.astype(dtype), None))
    return parts


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("cosine", [True, False])
def test_exact_search_returns_the_brute_force_top_k(monkeypatch, dtype, cosine):
    monkeypatch.setattr(exact_search, "SCORE_BYTES", 4 * 6 * 3 * 40)  # blocks of 40 rows: several per part
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1000, 16)).astype(np.float32)
    parts = parts_of(table, dtype, [300, 301, 777])
    queries = torch.from_numpy(rng.normal(size=(6, 3, 16)).astype(np.float32))
    seen = torch.tensor([[5, 17, 0], [0, 0, 0], [999, 300, 1], [2, 2, 2], [0, 0, 0], [777, 776, 0]])
    values, ids = ExactSearch(parts, cosine).topk(queries, seen, k=25)

    stored = np.concatenate([p.take(slice(0, p.last - p.first)) for p in parts])  # what the parts hold, as floats
    rows = stored / np.linalg.norm(stored, axis=1, keepdims=True) if cosine else stored
    q = queries.numpy()
    q = q / np.linalg.norm(q, axis=-1, keepdims=True) if cosine else q
    scores = np.einsum("uqd,rd->uqr", q, rows).max(axis=1)
    scores[:, 0] = -np.inf
    for user, items in enumerate(seen.numpy()):
        scores[user, items[items != 0]] = -np.inf
    for user in range(len(q)):
        expected = np.argsort(-scores[user], kind="stable")[:25]
        assert ids[user].tolist() == expected.tolist()
        np.testing.assert_allclose(values[user].numpy(), scores[user, expected], rtol=1e-4, atol=1e-5)


def test_it_says_how_many_bytes_a_query_reads():
    table = np.ones((100, 8), np.float32)
    assert ExactSearch(parts_of(table, "float16", [50]), cosine=False).table_bytes == 100 * 8 * 2
    assert ExactSearch(parts_of(table, "int8", [50]), cosine=False).table_bytes == 100 * 8 + 100 * 4
    assert ExactSearch(parts_of(table, "float32", []), cosine=True).table_bytes == 100 * 8 * 4 + 100 * 4


@pytest.mark.parametrize("users, width, k", [(1, 1_000_003, 50), (3, 200_000, 7), (1, 51_200, 50)])
def test_the_grouped_topk_of_a_long_row_is_torchs_topk(users, width, k):
    """Few long rows are searched as 16 slices at once: the same k best values, at the right ids."""
    from dimerec_dist.serving.exact_search import _topk

    scores = torch.randn(users, width, generator=torch.Generator().manual_seed(width))
    values, ids = _topk(scores, k)
    expected, _ = torch.topk(scores, k, dim=1)
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(1, ids), values)
