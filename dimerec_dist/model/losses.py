"""DimeRec's training losses: sampled softmax (L_gem, L_ssm) and reconstruction (L_recon).

Only tensors in, tensors out: where the negatives' embeddings come from (a local table or
a table sharded over ranks) is the caller's business.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r} (mean, sum or none)")


def sampled_softmax_loss(
    query: Tensor,
    target: Tensor,
    negatives: Tensor,
    target_ids: Tensor,
    negative_ids: Tensor,
    *,
    temperature: float = 1.0,
    cosine: bool = False,
    target_log_q: Tensor | None = None,
    negative_log_q: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """-log softmax of the target among the target and sampled negatives.

    query (B, d); target (B, d) with ids (B,); negatives either shared by the batch,
    (M, d) with ids (M,), or per sample, (B, M, d) with ids (B, M).
    A negative whose id equals the sample's target (an accidental hit) is masked out.
    With log-probabilities of being sampled, logQ correction subtracts them from the
    logits (Yi et al. 2019), which removes the popularity bias of non-uniform sampling.
    `cosine` scores unit vectors; `temperature` divides every logit. The scores may be bf16
    (autocast); the softmax and everything after it is fp32.
    """
    if cosine:
        query, target = F.normalize(query, dim=-1), F.normalize(target, dim=-1)
        negatives = F.normalize(negatives, dim=-1)
    positive = (query * target).sum(-1, keepdim=True)  # B,1
    if negatives.dim() == 2:
        negative = query @ negatives.T  # B,M
        hits = target_ids.unsqueeze(1) == negative_ids.unsqueeze(0)
    elif negatives.dim() == 3:
        negative = torch.einsum("bd,bmd->bm", query, negatives)
        hits = target_ids.unsqueeze(1) == negative_ids
    else:
        raise ValueError(f"negatives must be (M, d) or (B, M, d), got {tuple(negatives.shape)}")
    positive = positive.float() / temperature
    negative = negative.float() / temperature
    if target_log_q is not None:
        positive = positive - target_log_q.unsqueeze(1)
    if negative_log_q is not None:
        negative = negative - (negative_log_q.unsqueeze(0) if negative_log_q.dim() == 1 else negative_log_q)
    negative = negative.masked_fill(hits, torch.finfo(negative.dtype).min)
    logits = torch.cat([positive, negative], dim=1)
    return _reduce(-torch.log_softmax(logits, dim=1)[:, 0], reduction)


def reconstruction_loss(x0: Tensor, x0_hat: Tensor, reduction: str = "mean") -> Tensor:
    """L_recon = ||x0 - x0_hat||^2, summed over the embedding dimension (in fp32 under autocast)."""
    return _reduce(((x0.float() - x0_hat.float()) ** 2).sum(-1), reduction)
