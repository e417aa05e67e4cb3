"""Diffusion Aggregation Module: the denoiser x0_hat = f(x_t, s_t, g).

A plain MLP that predicts x0 directly (not the noise). The step enters through a
learned embedding table s_1..s_T, as in the paper's figure, not a sinusoidal code. How
the K guidance vectors enter is a choice: concatenated (the simplest reading of the
figure) or pooled by attention with x_t + s_t as the query.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GuidanceAttentionPool(nn.Module):
    """Single-head attention over the K interests, queried by the noisy point and its step."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)

    def forward(self, query: Tensor, guidance: Tensor) -> Tensor:
        scores = torch.einsum("bd,bkd->bk", self.query(query), self.key(guidance)) / math.sqrt(query.shape[-1])
        return torch.einsum("bk,bkd->bd", torch.softmax(scores, dim=-1), guidance)


class DAM(nn.Module):
    def __init__(
        self,
        dim: int,
        num_interests: int,
        diffusion_steps: int,
        hidden: int = 256,
        layers: int = 2,
        guidance_pooling: str = "concat",
        dropout: float = 0.0,
    ):
        super().__init__()
        if guidance_pooling not in ("concat", "attention"):
            raise ValueError(f"unknown guidance pooling {guidance_pooling!r} (concat or attention)")
        self.diffusion_steps = diffusion_steps
        self.guidance_pooling = guidance_pooling
        # Row t holds s_t for t = 1..T; row 0 is never used (t = 0 is clean data).
        self.step_embedding = nn.Embedding(diffusion_steps + 1, dim)
        nn.init.normal_(self.step_embedding.weight, std=0.02)
        if guidance_pooling == "attention":
            self.pool = GuidanceAttentionPool(dim)
            in_dim = 3 * dim
        else:
            self.pool = None
            in_dim = (2 + num_interests) * dim
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
        blocks.append(nn.Linear(hidden, dim))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, x_t: Tensor, t: Tensor, guidance: Tensor) -> Tensor:
        """x_t (B, d), t (B,) in 1..T, guidance (B, K, d) -> x0_hat (B, d), not normalised.

        t comes from the model's own step sampler, never from data, so it is not
        range-checked here (that would cost a device sync every step).
        """
        step = self.step_embedding(t)
        if self.pool is not None:
            pooled = self.pool(x_t + step, guidance)
            features = torch.cat([x_t, step, pooled], dim=-1)
        else:
            features = torch.cat([x_t, step, guidance.flatten(1)], dim=-1)
        return self.mlp(features)
