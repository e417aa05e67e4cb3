"""Sampled softmax and reconstruction, checked against direct formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from dimerec_dist.model.losses import reconstruction_loss, sampled_softmax_loss


def case(seed=0, b=4, m=6, d=8):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, d, generator=gen),
        torch.randn(b, d, generator=gen),
        torch.randn(m, d, generator=gen),
        torch.arange(b) + 100,
        torch.arange(m) + 200,
    )


def reference(query, target, negatives, temperature=1.0):
    """-log( exp(q.e_a / tau) / (exp(q.e_a / tau) + sum_neg exp(q.e_neg / tau)) ), one sample at a time."""
    out = []
    for q, e in zip(query, target):
        pos = math.exp(float(q @ e) / temperature)
        neg = sum(math.exp(float(q @ n) / temperature) for n in negatives)
        out.append(-math.log(pos / (pos + neg)))
    return torch.tensor(out)


def test_shared_negatives_match_the_paper_formula():
    q, t, n, tid, nid = case()
    loss = sampled_softmax_loss(q, t, n, tid, nid, temperature=0.5, reduction="none")
    torch.testing.assert_close(loss, reference(q, t, n, 0.5), rtol=1e-5, atol=1e-5)
    assert sampled_softmax_loss(q, t, n, tid, nid, temperature=0.5).item() == pytest.approx(loss.mean().item())
    assert sampled_softmax_loss(q, t, n, tid, nid, temperature=0.5, reduction="sum").item() == pytest.approx(
        loss.sum().item(), rel=1e-6
    )


def test_accidental_hits_are_removed_from_the_denominator():
    q, t, n, tid, nid = case()
    n[2] = t[1]
    nid[2] = tid[1]  # negative 2 is sample 1's target
    loss = sampled_softmax_loss(q, t, n, tid, nid, reduction="none")
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(loss[1], reference(q[1:2], t[1:2], n[keep])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss[0], reference(q[0:1], t[0:1], n)[0], rtol=1e-5, atol=1e-5)


def test_per_sample_negatives_and_their_hits():
    q, t, _, tid, _ = case()
    gen = torch.Generator().manual_seed(3)
    n = torch.randn(4, 5, 8, generator=gen)
    nid = torch.arange(20).view(4, 5) + 300
    nid[3, 4] = tid[3]
    loss = sampled_softmax_loss(q, t, n, tid, nid, reduction="none")
    for row in range(3):
        expected = reference(q[row : row + 1], t[row : row + 1], n[row])[0]
        torch.testing.assert_close(loss[row], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss[3], reference(q[3:4], t[3:4], n[3, :4])[0], rtol=1e-5, atol=1e-5)


def test_log_q_correction_subtracts_log_probabilities_from_logits():
    q, t, n, tid, nid = case()
    target_log_q = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    negative_log_q = torch.log(torch.linspace(0.05, 0.3, 6))
    loss = sampled_softmax_loss(
        q, t, n, tid, nid, target_log_q=target_log_q, negative_log_q=negative_log_q, reduction="none"
    )
    logits = torch.cat([(q * t).sum(-1, keepdim=True) - target_log_q.unsqueeze(1), q @ n.T - negative_log_q], 1)
    torch.testing.assert_close(loss, -torch.log_softmax(logits, 1)[:, 0])
    per_sample_q = negative_log_q.expand(4, 6)
    torch.testing.assert_close(
        loss,
        sampled_softmax_loss(
            q,
            t,
            n.expand(4, 6, 8),
            tid,
            nid.expand(4, 6),
            target_log_q=target_log_q,
            negative_log_q=per_sample_q,
            reduction="none",
        ),
    )


def test_cosine_logits_ignore_norms():
    q, t, n, tid, nid = case()
    base = sampled_softmax_loss(q, t, n, tid, nid, cosine=True, temperature=0.1)
    scaled = sampled_softmax_loss(7 * q, 3 * t, 0.5 * n, tid, nid, cosine=True, temperature=0.1)
    torch.testing.assert_close(base, scaled)
    torch.testing.assert_close(
        base,
        sampled_softmax_loss(
            F.normalize(q, dim=-1), F.normalize(t, dim=-1), F.normalize(n, dim=-1), tid, nid, temperature=0.1
        ),
    )


def test_bad_shapes_and_reductions_are_refused():
    q, t, n, tid, nid = case()
    with pytest.raises(ValueError, match="negatives must be"):
        sampled_softmax_loss(q, t, n.view(-1), tid, nid)
    with pytest.raises(ValueError, match="unknown reduction"):
        sampled_softmax_loss(q, t, n, tid, nid, reduction="max")


def test_reconstruction_is_squared_distance_summed_over_dimensions():
    x0, x0_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert reconstruction_loss(x0, x0_hat, reduction="none").tolist() == [1.0, 4.0]
    assert reconstruction_loss(x0, x0_hat).item() == 2.5
