"""Guidance extraction: masking, shapes, the hard readout, and the rule-based variants."""

import pytest
import torch

import dimerec_dist.model.gem as gem_module
from dimerec_dist.model.gem import (
    ComiRecDR,
    ComiRecSA,
    LastKGEM,
    build_gem,
    hard_readout,
    interest_scores,
    masked_softmax,
    recency_positions,
)

B, N, D, K = 6, 9, 16, 3
KINDS = ["comirec_sa", "comirec_dr", "sasrec", "mean", "last_k"]


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    history = torch.randn(B, N, D, generator=gen)
    lengths = torch.tensor([1, 2, 4, 5, 8, 9])
    mask = torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)
    return history, mask, lengths


def build(kind):
    torch.manual_seed(0)
    return build_gem(kind, D, K, N, dropout=0.0).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_every_gem_returns_k_interests_and_ignores_padding(kind):
    history, mask, _ = batch()
    gem = build(kind)
    guidance = gem(history, mask)
    assert guidance.shape == (B, K, D)
    assert torch.isfinite(guidance).all()
    # Whatever sits in the padded slots must not change the guidance.
    scrambled = torch.where(mask.unsqueeze(-1), history, 100 * torch.randn_like(history))
    torch.testing.assert_close(gem(scrambled, mask), guidance)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_history_is_a_clear_error(kind):
    history, mask, _ = batch()
    mask[2] = False
    with pytest.raises(ValueError, match=r"empty history in batch rows \[2\]"):
        build(kind)(history, mask)


def test_shape_mismatch_is_a_clear_error():
    history, mask, _ = batch()
    with pytest.raises(ValueError, match="must be"):
        build("comirec_sa")(history, mask[:, :-1])


def test_padded_positions_get_exactly_zero_attention():
    history, mask, lengths = batch()
    attention = ComiRecSA(D, K, N).attention(history, mask)
    assert attention.shape == (B, N, K)
    assert torch.all(attention[~mask] == 0), "padding must get zero weight"
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(B, K))
    assert torch.all(attention[mask] > 0)


def assert_fast_path_matches_traced_path(monkeypatch, gem, history, mask):
    """The eager fast path and the padded path an export traces: same output, same gradients
    (to the history and to every parameter)."""
    results = []
    for traced in (False, True):
        monkeypatch.setattr(gem_module, "tracing", lambda traced=traced: traced)
        leaf = history.clone().requires_grad_()
        gem.zero_grad()
        out = gem(leaf, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), leaf.grad] + [p.grad.clone() for p in gem.parameters()])
    for fast, traced in zip(*results):
        torch.testing.assert_close(fast, traced)


def test_comirec_sa_scores_real_positions_only_and_equals_the_dense_computation(monkeypatch):
    history, mask, _ = batch()
    torch.manual_seed(1)
    assert_fast_path_matches_traced_path(monkeypatch, ComiRecSA(D, K, N), history, mask)


def test_sasrec_by_length_groups_equals_one_padded_pass(monkeypatch):
    """Groups of 1-8, 9-16, 17-32 and 33-40 items, each cut to its longest."""
    torch.manual_seed(2)
    n = 40
    lengths = torch.tensor([1, 3, 8, 9, 15, 16, 17, 33, 40, 2])
    mask = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    sasrec = build_gem("sasrec", D, K, n, dropout=0.0)
    assert_fast_path_matches_traced_path(monkeypatch, sasrec, torch.randn(len(lengths), n, D), mask)


def test_masked_softmax_zeroes_masked_entries():
    scores = torch.tensor([[5.0, 1.0, 9.0]])
    out = masked_softmax(scores, torch.tensor([[True, True, False]]), dim=1)
    assert out[0, 2].item() == 0.0
    torch.testing.assert_close(out[0, :2], torch.softmax(torch.tensor([5.0, 1.0]), 0))


def test_recency_positions_count_back_from_the_last_item():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert recency_positions(mask).tolist() == [[2, 1, 0, 0], [0, 0, 0, 0]]


def test_last_k_takes_most_recent_items_and_repeats_the_oldest_when_short():
    history, mask, lengths = batch()
    out = LastKGEM(K)(history, mask)
    for row, length in enumerate(lengths.tolist()):
        expected = [max(length - 1 - j, 0) for j in range(K)]
        torch.testing.assert_close(out[row], history[row, expected])


def test_dynamic_routing_capsules_have_norm_below_one_and_see_every_item():
    history, mask, _ = batch()
    gem = ComiRecDR(D, K, iterations=3)
    guidance = gem(history, mask)
    assert torch.all(guidance.norm(dim=-1) < 1)
    # A real item (not padding) changes the result.
    moved = history.clone()
    moved[4, 0] += 5
    assert not torch.allclose(gem(moved, mask)[4], guidance[4])


def test_hard_readout_picks_the_interest_closest_to_the_target():
    guidance = torch.zeros(2, 3, 4)
    guidance[:, 0, 0] = guidance[:, 1, 1] = guidance[:, 2, 2] = 1.0
    guidance[1, 2] = torch.tensor([5.0, 0.0, 1.0, 0.0])  # long but off-target
    target = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.3, 1.0, 0.0, 0.0]])
    raw = hard_readout(guidance, target)
    torch.testing.assert_close(raw[0], guidance[0, 1])
    torch.testing.assert_close(raw[1], guidance[1, 2], msg="raw inner product: the long interest wins (1.5 > 1)")
    cosine = hard_readout(guidance, target, cosine=True)
    torch.testing.assert_close(cosine[1], guidance[1, 1], msg="cosine: the aligned interest wins")


def test_hard_readout_sends_gradient_to_the_chosen_interest_only():
    guidance = torch.eye(3).unsqueeze(0).requires_grad_()
    hard_readout(guidance, torch.tensor([[0.0, 0.0, 1.0]])).sum().backward()
    assert guidance.grad[0, 2].abs().sum() > 0 and guidance.grad[0, :2].abs().sum() == 0


def test_interest_scores_take_the_best_interest_per_item():
    guidance = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    items = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    assert interest_scores(guidance, items).tolist() == [[2.0, 3.0, -1.0]]


def test_unknown_gem_is_refused():
    with pytest.raises(ValueError, match="unknown GEM"):
        build_gem("gru", D, K, N)
