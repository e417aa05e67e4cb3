"""Diffusion maths: beta schedules, the Geodesic Random Walk on the unit sphere, the
Euclidean DDPM step (the paper's "w/o GRW" ablation), and the reverse sampler.

Timesteps run 1..T; index 0 of every table is the clean data (alphabar_0 = 1), so a
reverse step from t to any s < t, including s = 0, uses one formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

_EPS = 1e-12


def beta_schedule(kind: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Betas for t = 1..steps (float64). `linear` as in DDPM; `cosine` as in Nichol & Dhariwal 2021."""
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "cosine":
        offset = 0.008
        grid = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        alphabar = torch.cos((grid + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = 1 - alphabar[1:] / alphabar[:-1]
        return betas.clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r} (linear or cosine)")


class DiffusionSchedule(nn.Module):
    """The per-step tables a DDPM needs, stored as buffers so they follow the module's device."""

    def __init__(self, betas: Tensor):
        super().__init__()
        betas = betas.to(torch.float64)
        alphabar = torch.cumprod(1 - betas, dim=0)
        # Prepend t = 0 (clean data) so tables are indexed directly by t in 0..T.
        alphabar = torch.cat([alphabar.new_ones(1), alphabar])
        self.register_buffer("betas", torch.cat([betas.new_zeros(1), betas]).float())
        self.register_buffer("alphabar", alphabar.float())
        # The posterior divides by 1 - alphabar_t, tiny at t = 1: keep float64 copies for it.
        self._alphabar64 = alphabar.tolist()
        self.steps = len(betas)

    def noise_level(self, t: Tensor) -> Tensor:
        """sqrt(1 - alphabar_t): the DDPM noise scale at step t."""
        return (1 - self.alphabar[t]).clamp(min=0).sqrt()

    def posterior(self, t: int, s: int) -> tuple[float, float, float]:
        """q(x_s | x_t, x_0) for 0 <= s < t: (coefficient of x_0, coefficient of x_t, variance).

        With s = t - 1 this is DDPM's mu_tilde_t and beta_tilde_t; larger jumps give the
        same posterior between two non-adjacent steps, so the sampler can take any count.
        """
        if not 0 <= s < t <= self.steps:
            raise ValueError(f"need 0 <= s < t <= {self.steps}, got s={s}, t={t}")
        abar_t, abar_s = self._alphabar64[t], self._alphabar64[s]
        alpha_ts = abar_t / abar_s
        beta_ts = 1 - alpha_ts
        denom = 1 - abar_t
        coef_x0 = math.sqrt(abar_s) * beta_ts / denom
        coef_xt = math.sqrt(alpha_ts) * (1 - abar_s) / denom
        variance = beta_ts * (1 - abar_s) / denom
        return coef_x0, coef_xt, variance


# --------------------------------------------------------------------------- sphere


def normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=_EPS)


def tangent_projection(x: Tensor, noise: Tensor) -> Tensor:
    """Remove from `noise` its component along the unit vector x: a vector of the tangent space at x."""
    return noise - (noise * x).sum(-1, keepdim=True) * x


def exp_map(x: Tensor, v: Tensor) -> Tensor:
    """The sphere's exponential map: walk |v| radians from x along the geodesic in direction v."""
    norm = v.norm(dim=-1, keepdim=True)
    direction = v / norm.clamp(min=_EPS)
    return torch.cos(norm) * x + torch.sin(norm) * direction


def grw_tangent_step(
    x0: Tensor,
    t: Tensor,
    schedule: DiffusionSchedule,
    noise: Tensor,
    scale: str = "angle",
    max_angle: float = math.pi / 2,
) -> Tensor:
    """The tangent vector v of Algorithm 1, line 7, so that x_t = exp_{x0}(v).

    `literal`: v = sqrt(1 - alphabar_t) * eps_tangent, as printed. |eps_tangent| is about
    sqrt(d - 1), so late steps walk several radians and wrap round the sphere.
    `angle`: the same isotropic direction, walked max_angle * sqrt(1 - alphabar_t) /
    sqrt(1 - alphabar_T) radians: the schedule's shape, monotone in t, reaching max_angle
    (pi/2 by default, where a uniform random start of inference typically lies) at t = T
    whatever the betas.
    """
    tangent = tangent_projection(x0, noise)
    level = schedule.noise_level(t).unsqueeze(-1)
    if scale == "literal":
        return level * tangent
    if scale == "angle":
        final = schedule.noise_level(torch.tensor(schedule.steps, device=t.device))
        return (level / final) * max_angle * normalize(tangent)
    raise ValueError(f"unknown GRW noise scale {scale!r} (angle or literal)")


def grw_forward(
    x0: Tensor,
    t: Tensor,
    schedule: DiffusionSchedule,
    noise: Tensor,
    scale: str = "angle",
    max_angle: float = math.pi / 2,
) -> Tensor:
    """Geodesic Random Walk noising of unit vectors x0 (B, d) to step t (B,)."""
    return exp_map(x0, grw_tangent_step(x0, t, schedule, noise, scale, max_angle))


def euclidean_forward(x0: Tensor, t: Tensor, schedule: DiffusionSchedule, noise: Tensor) -> Tensor:
    """Ordinary DDPM noising: sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) eps, not renormalised."""
    abar = schedule.alphabar[t].unsqueeze(-1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


# --------------------------------------------------------------------------- reverse


def sample_timesteps(total: int, count: int) -> list[int]:
    """`count` strictly decreasing steps from `total` down to >= 1, evenly spread."""
    if not 1 <= count <= total:
        raise ValueError(f"sampling steps must lie in 1..{total}, got {count}")
    # torch.linspace's own formula (each half from its end), in plain Python so the steps stay
    # ints while torch.export traces the sampler.
    step = (1 - total) / (count - 1) if count > 1 else 0.0
    grid = [
        round(total + i * step) if i < count // 2 or count == 1 else round(1 - (count - 1 - i) * step)
        for i in range(count)
    ]
    return list(dict.fromkeys(grid))  # rounding can repeat a step when count is close to total


Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B,d), t (B,)) -> x0_hat (B,d)


@torch.no_grad()
def reverse_sample(
    denoise: Denoiser,
    batch: int,
    dim: int,
    schedule: DiffusionSchedule,
    steps: int,
    deterministic: bool = True,
    space: str = "sphere",
    noise_std: str = "posterior",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    start: Tensor | None = None,
) -> Tensor:
    """Algorithm 2 with any number of steps from 1 to T.

    Starts from x_T (uniform on the sphere, or N(0, I) in Euclidean space) and walks the
    chosen sub-sequence of steps with the DDPM posterior between consecutive ones. On the
    sphere every intermediate point is renormalised. `deterministic` drops the posterior
    noise; x_T comes from `generator` (or is given as `start`, e.g. drawn per user so a
    user's query does not depend on its batch), so a seeded call repeats exactly.
    `noise_std`: "posterior" uses sqrt(beta_tilde) (DDPM), "beta_tilde" uses beta_tilde
    itself, as Algorithm 2 prints it.
    """
    if space not in ("sphere", "euclidean"):
        raise ValueError(f"unknown noise space {space!r}")
    if noise_std not in ("posterior", "beta_tilde"):
        raise ValueError(f"unknown reverse noise std {noise_std!r} (posterior or beta_tilde)")
    x = torch.randn(batch, dim, generator=generator, device=device) if start is None else start
    if space == "sphere":
        x = normalize(x)
    timesteps = sample_timesteps(schedule.steps, steps) + [0]
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        x0_hat = denoise(x, torch.full((batch,), t, dtype=torch.long, device=device))
        if space == "sphere":
            x0_hat = normalize(x0_hat)
        coef_x0, coef_xt, variance = schedule.posterior(t, s)
        x = coef_x0 * x0_hat + coef_xt * x
        if not deterministic and variance > 0:
            std = math.sqrt(variance) if noise_std == "posterior" else variance
            x = x + std * torch.randn(batch, dim, generator=generator, device=device)
        if space == "sphere":
            x = normalize(x)
    return x
