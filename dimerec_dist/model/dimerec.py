"""DimeRec: GEM + DAM + diffusion, trained on L_gem + lambda L_recon + mu L_ssm.

The model owns no item table. The caller looks up embeddings (from a plain table, or
from a table TorchRec shards over ranks) and passes tensors in; the model returns
losses for training and a unit query vector for retrieval. Nothing here knows about
torch.distributed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimerec_dist.config import ModelConfig
from dimerec_dist.model.dam import DAM
from dimerec_dist.model.diffusion import (
    DiffusionSchedule,
    beta_schedule,
    euclidean_forward,
    grw_forward,
    normalize,
    reverse_sample,
)
from dimerec_dist.model.gem import build_gem, hard_readout
from dimerec_dist.model.losses import reconstruction_loss, sampled_softmax_loss
from dimerec_dist.model.sequence_windows import QueryWindows


@dataclass
class DimeRecLosses:
    total: Tensor
    gem: Tensor
    recon: Tensor
    ssm: Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """total, gem, recon, ssm: the order every report of the losses keeps."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def scalars(self) -> dict[str, float]:
        return {f"loss/{name}": getattr(self, name).item() for name in self.names()}


@dataclass
class NoiseDraw:
    """The random part of one training step, drawn outside so a distributed trainer can
    draw it for the global batch and give each rank its slice."""

    t: Tensor  # (B,) steps in 1..T
    noise: Tensor  # (B, d) standard normal
    unguided: Tensor | None = None  # (B,) bool: denoise with the null guidance (classifier-free guidance)

    @staticmethod
    def draw(
        batch: int,
        dim: int,
        steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        guidance_dropout: float = 0.0,
    ) -> NoiseDraw:
        t = torch.randint(1, steps + 1, (batch,), generator=generator, device=device)
        noise = torch.randn(batch, dim, generator=generator, device=device)
        # Drawn last, and only when asked: a run without guidance dropout draws what it always drew.
        unguided = (
            torch.rand(batch, generator=generator, device=device) < guidance_dropout if guidance_dropout > 0 else None
        )
        return NoiseDraw(t, noise, unguided)

    def rows(self, rows: Tensor, device: torch.device | str) -> NoiseDraw:
        """This rank's slice of a draw made for the global batch."""
        unguided = None if self.unguided is None else self.unguided[rows]
        return NoiseDraw(self.t[rows], self.noise[rows], unguided).to(device)

    def _map(self, fn) -> NoiseDraw:
        return NoiseDraw(fn(self.t), fn(self.noise), None if self.unguided is None else fn(self.unguided))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> NoiseDraw:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> NoiseDraw:
        return self._map(Tensor.pin_memory)

    def record_stream(self, stream: torch.Stream) -> None:
        self._map(lambda t: t.record_stream(stream) or t)


class DimeRec(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.gem = build_gem(
            c.gem,
            c.embedding_dim,
            c.num_interests,
            c.max_history,
            hidden_mult=c.gem_hidden_mult,
            attention_positions=c.attention_positions,
            routing_iterations=c.routing_iterations,
            sasrec_layers=c.sasrec_layers,
            sasrec_heads=c.sasrec_heads,
            dropout=c.dropout,
        )
        self.history_dropout = nn.Dropout(c.history_dropout)
        self.dam = DAM(
            c.embedding_dim, c.num_interests, c.diffusion_steps, c.dam_hidden, c.dam_layers, c.guidance_pooling
        )
        self.schedule = DiffusionSchedule(beta_schedule(c.beta_schedule, c.diffusion_steps, c.beta_start, c.beta_end))
        # Only a model trained with guidance dropout has it, so older checkpoints keep loading.
        self.null_guidance = (
            nn.Parameter(torch.zeros(c.num_interests, c.embedding_dim)) if c.guidance_dropout > 0 else None
        )

    # ------------------------------------------------------------------ training

    def diffuse(self, target: Tensor, draw: NoiseDraw) -> tuple[Tensor, Tensor]:
        """(x0, x_t) for the target embeddings: GRW on the sphere, or Euclidean DDPM noise."""
        c = self.config
        if c.noise_space == "sphere":
            x0 = normalize(target)
            return x0, grw_forward(x0, draw.t, self.schedule, draw.noise, c.grw_noise_scale, c.grw_max_angle)
        return target, euclidean_forward(target, draw.t, self.schedule, draw.noise)

    def forward(
        self,
        history: Tensor,
        mask: Tensor,
        target: Tensor,
        target_ids: Tensor,
        negatives: Tensor,
        negative_ids: Tensor,
        **options,
    ) -> DimeRecLosses:
        """The three losses for one batch.

        history (B, N, d) and mask (B, N): the embedded history; target (B, d) and
        target_ids (B,): the next item; negatives (M, d) or (B, M, d) with their ids.
        `options`: `losses`' keywords (the noise draw, logQ corrections, reduction).
        A loss whose weight is 0 is not computed (reported as 0).
        """
        guidance = self.gem(self._dropped_history(history, mask), mask)
        return self.losses(guidance, target, target_ids, negatives, negative_ids, **options)

    def forward_sequence(
        self,
        items: Tensor,
        mask: Tensor,
        windows: QueryWindows,
        target: Tensor,
        target_ids: Tensor,
        negatives: Tensor,
        negative_ids: Tensor,
        **options,
    ) -> DimeRecLosses:
        """The three losses for every query of a batch of chunks, in one pass over each chunk.

        items (B, S, d) and mask (B, S): the embedded chunks; `windows`: the queries (Q of them);
        target (Q, d) and target_ids (Q,): the item after each query. `options` as forward's.
        Each target is one query of one chunk, so each counts once in the mean."""
        guidance = self.gem.sequence(self._dropped_history(items, mask), mask, windows)
        return self.losses(guidance, target, target_ids, negatives, negative_ids, **options)

    def _dropped_history(self, history: Tensor, mask: Tensor) -> Tensor:
        if self.training and self.config.history_dropout > 0:
            # Real positions only: the mask draw on padding (most of a short history's slots) is wasted.
            return history.index_put((mask,), self.history_dropout(history[mask]))
        return history

    def losses(
        self,
        guidance: Tensor,
        target: Tensor,
        target_ids: Tensor,
        negatives: Tensor,
        negative_ids: Tensor,
        *,
        draw: NoiseDraw | None = None,
        target_log_q: Tensor | None = None,
        negative_log_q: Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> DimeRecLosses:
        """L_gem + lambda L_recon + mu L_ssm from the GEM's interests (B, K, d) for targets (B, d)."""
        c = self.config
        softmax = dict(
            temperature=c.temperature,
            cosine=c.cosine_logits,
            target_log_q=target_log_q,
            negative_log_q=negative_log_q,
            reduction=reduction,
        )
        zero = target.new_zeros(())

        gem_loss = zero
        if c.gem_weight > 0:
            chosen = hard_readout(guidance, target, cosine=c.cosine_logits)
            gem_loss = sampled_softmax_loss(chosen, target, negatives, target_ids, negative_ids, **softmax)

        recon = ssm = zero
        if c.recon_weight > 0 or c.ssm_weight > 0:
            if draw is None:
                draw = NoiseDraw.draw(
                    target.shape[0], target.shape[1], c.diffusion_steps, generator, target.device, c.guidance_dropout
                )
            x0, x_t = self.diffuse(target, draw)
            x0_hat = self.dam(x_t, draw.t, self._dropped_guidance(guidance, draw.unguided))
            if c.recon_weight > 0:
                recon = reconstruction_loss(x0, x0_hat, reduction)
            if c.ssm_weight > 0:
                ssm = sampled_softmax_loss(x0_hat, target, negatives, target_ids, negative_ids, **softmax)

        total = c.gem_weight * gem_loss + c.recon_weight * recon + c.ssm_weight * ssm
        return DimeRecLosses(total=total, gem=gem_loss, recon=recon, ssm=ssm)

    def _dropped_guidance(self, guidance: Tensor, unguided: Tensor | None) -> Tensor:
        """The DAM's guidance with the null guidance in the dropped rows. torch.where keeps the
        null guidance in the graph on a step that drops no row (DDP wants every parameter used)."""
        if self.null_guidance is None:
            return guidance
        if unguided is None:
            raise ValueError(
                "a model with guidance dropout needs the draw's `unguided` rows "
                "(NoiseDraw.draw(..., guidance_dropout=...))"
            )
        return torch.where(unguided[:, None, None], self.null_guidance.expand_as(guidance), guidance)

    # ------------------------------------------------------------------ inference

    def interests(self, history: Tensor, mask: Tensor) -> Tensor:
        """The GEM's K interests (B, K, d), for GEM-only retrieval and diagnostics."""
        return self.gem(history, mask)

    @torch.no_grad()
    def user_embedding(
        self,
        history: Tensor,
        mask: Tensor,
        *,
        steps: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
        start: Tensor | None = None,
    ) -> Tensor:
        """The generated next interest e_u (B, d) (Algorithm 2); unit norm on the sphere.

        `start` (B, d) fixes x_T; otherwise it is drawn from `generator`."""
        return self._generate(
            self.gem(history, mask), steps=steps, deterministic=deterministic, generator=generator, start=start
        )

    def _generate(
        self,
        guidance: Tensor,
        *,
        steps: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
        start: Tensor | None = None,
    ) -> Tensor:
        c = self.config

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            guided = self.dam(x, t, guidance)
            if c.guidance_scale == 0:
                return guided
            unguided = self.dam(x, t, self.null_guidance.expand_as(guidance))
            return (1 + c.guidance_scale) * guided - c.guidance_scale * unguided

        return reverse_sample(
            denoise,
            guidance.shape[0],
            c.embedding_dim,
            self.schedule,
            c.sample_steps if steps is None else steps,
            c.sample_deterministic if deterministic is None else deterministic,
            space=c.noise_space,
            noise_std=c.reverse_noise_std,
            generator=generator,
            device=guidance.device,
            start=start,
        )

    @torch.no_grad()
    def queries(self, history: Tensor, mask: Tensor, mode: str, **sampling) -> Tensor:
        """Retrieval queries (B, Q, d) by mode: "dam" the generated interest (Q = 1), "gem" the K
        interests, "dam+gem" both (Q = 1 + K). `sampling`: user_embedding's keyword arguments.
        The GEM runs once whatever the mode."""
        if mode not in ("dam", "gem", "dam+gem"):
            raise ValueError(f"unknown query mode {mode!r} (dam, gem or dam+gem)")
        guidance = self.gem(history, mask)
        if mode == "gem":
            return guidance
        generated = self._generate(guidance, **sampling).unsqueeze(1)
        return generated if mode == "dam" else torch.cat([generated, guidance], dim=1)

    def item_scores(self, query: Tensor, items: Tensor) -> Tensor:
        """Retrieval scores (B, M) of queries against item embeddings, in the space the softmaxes trained."""
        if self.config.cosine_logits:
            query, items = F.normalize(query, dim=-1), F.normalize(items, dim=-1)
        return query @ items.T
