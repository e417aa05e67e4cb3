"""The diffusion maths: schedules, GRW on the sphere, the reverse sampler."""

import math

import pytest
import torch

from dimerec_dist.model.diffusion import (
    DiffusionSchedule,
    beta_schedule,
    euclidean_forward,
    exp_map,
    grw_forward,
    grw_tangent_step,
    normalize,
    reverse_sample,
    sample_timesteps,
    tangent_projection,
)

T = 50
DIM = 64


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return DiffusionSchedule(beta_schedule(request.param, T))


def unit_batch(n=256, d=DIM, seed=0):
    return normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def geodesic_angle(a, b):
    return torch.arccos((a * b).sum(-1).clamp(-1, 1))


def test_linear_schedule_endpoints_and_cosine_shape():
    linear = beta_schedule("linear", T, 1e-4, 0.02)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    cosine = DiffusionSchedule(beta_schedule("cosine", T))
    assert torch.all(cosine.alphabar[1:] < cosine.alphabar[:-1]), "alphabar must fall strictly with t"
    assert cosine.alphabar[0].item() == 1.0 and cosine.alphabar[-1].item() < 1e-3
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("quadratic", T)
    with pytest.raises(ValueError, match=">= 1"):
        beta_schedule("linear", 0)


def test_tangent_noise_is_orthogonal_to_x0():
    x0 = unit_batch()
    tangent = tangent_projection(x0, torch.randn_like(x0))
    assert (tangent * x0).sum(-1).abs().max().item() < 1e-5


@pytest.mark.parametrize("scale", ["angle", "literal"])
def test_grw_output_has_unit_norm_for_every_step(schedule, scale):
    x0 = unit_batch()
    for t in range(1, T + 1):
        steps = torch.full((x0.shape[0],), t)
        x_t = grw_forward(x0, steps, schedule, torch.randn_like(x0), scale=scale)
        assert (x_t.norm(dim=-1) - 1).abs().max().item() < 1e-5, f"t={t}"


def test_grw_angle_equals_tangent_norm_and_grows_with_t(schedule):
    """exp_x(v) lies |v| radians from x along the sphere: the exponential map, checked directly."""
    x0 = unit_batch()
    noise = torch.randn_like(x0)
    previous = torch.zeros(x0.shape[0])
    for t in range(1, T + 1):
        steps = torch.full((x0.shape[0],), t)
        v = grw_tangent_step(x0, steps, schedule, noise, scale="angle")
        angle = geodesic_angle(x0, exp_map(x0, v))
        torch.testing.assert_close(angle, v.norm(dim=-1), atol=2e-3, rtol=0)
        assert torch.all(angle >= previous - 1e-6), f"angle fell at t={t}"
        previous = angle
    torch.testing.assert_close(
        previous, torch.full_like(previous, math.pi / 2), atol=2e-3, rtol=0, msg="t = T must sit pi/2 from x0"
    )


def test_literal_grw_matches_exp_map_until_it_wraps(schedule):
    """Algorithm 1 as printed: the walk length is sqrt(1 - alphabar_t) |eps| ~ sqrt(d) radians.

    Where the step is under pi radians the angle equals it; late steps exceed a full half
    turn, so cos(x_t, x0) stops being monotone in t (METHOD.md's observation).
    """
    x0 = unit_batch()
    noise = torch.randn_like(x0)
    lengths, angles = [], []
    for t in range(1, T + 1):
        v = grw_tangent_step(x0, torch.full((x0.shape[0],), t), schedule, noise, scale="literal")
        lengths.append(v.norm(dim=-1))
        angles.append(geodesic_angle(x0, grw_forward(x0, torch.full((x0.shape[0],), t), schedule, noise, "literal")))
    lengths, angles = torch.stack(lengths), torch.stack(angles)
    assert torch.all(lengths[1:] >= lengths[:-1] - 1e-6), "the walk length grows with t"
    short = lengths < math.pi - 1e-3
    torch.testing.assert_close(angles[short], lengths[short], atol=2e-3, rtol=0)
    assert lengths[-1].mean().item() > math.pi, "at d=64 the literal walk passes the antipode"
    assert bool((angles[1:] < angles[:-1] - 1e-3).any()), "so the angle to x0 is not monotone in t"


def test_euclidean_forward_is_ddpm():
    schedule = DiffusionSchedule(beta_schedule("linear", T))
    x0, noise = torch.randn(4, DIM), torch.randn(4, DIM)
    t = torch.tensor([1, 10, 25, 50])
    abar = schedule.alphabar[t].unsqueeze(-1)
    torch.testing.assert_close(euclidean_forward(x0, t, schedule, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)


def test_posterior_matches_ddpm_for_adjacent_steps():
    betas = beta_schedule("linear", T)  # float64
    schedule = DiffusionSchedule(betas)
    alphabar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
    for t in (1, 2, 17, T):
        beta = betas[t - 1].item()
        abar_t, abar_prev = alphabar[t].item(), alphabar[t - 1].item()
        coef_x0, coef_xt, variance = schedule.posterior(t, t - 1)
        assert coef_x0 == pytest.approx(math.sqrt(abar_prev) * beta / (1 - abar_t), rel=1e-9)
        assert coef_xt == pytest.approx(math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t), rel=1e-9)
        assert variance == pytest.approx((1 - abar_prev) / (1 - abar_t) * beta, rel=1e-5)
    assert schedule.posterior(T, 0) == pytest.approx((1.0, 0.0, 0.0)), "the last step lands on x0_hat"
    with pytest.raises(ValueError):
        schedule.posterior(3, 3)


def test_sample_timesteps_spread_and_bounds():
    assert sample_timesteps(T, 1) == [T]
    assert sample_timesteps(T, T) == list(range(T, 0, -1))
    steps = sample_timesteps(T, 7)
    assert steps[0] == T and steps[-1] == 1 and len(steps) == 7 and steps == sorted(steps, reverse=True)
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="sampling steps"):
            sample_timesteps(T, bad)


def toy_denoiser(x, t):
    """A fixed, non-trivial x0 predictor: pulls every point toward one direction."""
    target = torch.zeros_like(x)
    target[:, 0] = 1.0
    return 0.7 * x + target * (t.float().unsqueeze(-1) / T)


@pytest.mark.parametrize("steps", [1, 2, 5, T])
@pytest.mark.parametrize("deterministic", [True, False])
def test_sampler_returns_unit_vectors_for_any_step_count(schedule, steps, deterministic):
    out = reverse_sample(
        toy_denoiser, 32, DIM, schedule, steps, deterministic=deterministic, generator=torch.Generator().manual_seed(1)
    )
    assert out.shape == (32, DIM)
    assert (out.norm(dim=-1) - 1).abs().max().item() < 1e-5


def test_deterministic_sampler_repeats_exactly_and_stochastic_does_not(schedule):
    def run(deterministic, seed):
        return reverse_sample(
            toy_denoiser,
            16,
            DIM,
            schedule,
            10,
            deterministic=deterministic,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(True, 3), run(True, 3))
    assert torch.equal(run(False, 3), run(False, 3)), "a seeded stochastic run also repeats"
    first, second = (
        run(False, 3),
        reverse_sample(
            toy_denoiser,
            16,
            DIM,
            schedule,
            10,
            deterministic=False,
            generator=torch.Generator().manual_seed(3),
            noise_std="beta_tilde",
        ),
    )
    assert not torch.equal(first, second), "the two reverse noise scales must differ"
    assert not torch.equal(run(True, 3), run(False, 3)), "posterior noise must change a stochastic run"


def test_one_step_sampler_is_the_normalised_prediction_from_x_T(schedule):
    gen = torch.Generator().manual_seed(5)
    x_T = normalize(torch.randn(8, DIM, generator=torch.Generator().manual_seed(5)))
    out = reverse_sample(toy_denoiser, 8, DIM, schedule, 1, generator=gen)
    torch.testing.assert_close(out, normalize(toy_denoiser(x_T, torch.full((8,), T))))


def test_euclidean_sampler_is_not_renormalised():
    schedule = DiffusionSchedule(beta_schedule("linear", T))
    out = reverse_sample(lambda x, t: 3 * torch.ones_like(x), 4, DIM, schedule, 4, space="euclidean")
    torch.testing.assert_close(out, torch.full((4, DIM), 3.0))


def test_sampler_rejects_unknown_options(schedule):
    with pytest.raises(ValueError, match="noise space"):
        reverse_sample(toy_denoiser, 2, DIM, schedule, 1, space="torus")
    with pytest.raises(ValueError, match="reverse noise"):
        reverse_sample(toy_denoiser, 2, DIM, schedule, 1, noise_std="huge")
    with pytest.raises(ValueError, match="GRW noise scale"):
        grw_forward(unit_batch(2), torch.tensor([1, 2]), schedule, torch.randn(2, DIM), scale="wild")
