"""Classifier-free guidance (DreamRec's): training drops the GEM's guidance for a share of samples
in favour of a learned null guidance, and sampling extrapolates away from the null guidance."""

import pytest
import torch

from dimerec_dist.config import ConfigError
from dimerec_dist.model import DimeRec, NoiseDraw
from dimerec_dist.model.diffusion import normalize
from dimerec_dist.serving.tower import UserTower, export_tower
from tests.model.test_dimerec import B, D, inputs, small_config


def test_without_guidance_dropout_the_draw_and_the_model_are_what_they_were():
    plain = NoiseDraw.draw(64, D, 10, torch.Generator().manual_seed(3))
    dropped = NoiseDraw.draw(64, D, 10, torch.Generator().manual_seed(3), guidance_dropout=0.25)
    # The mask is drawn after t and eps, so a run without it draws exactly what it always drew.
    assert plain.unguided is None
    assert torch.equal(plain.t, dropped.t) and torch.equal(plain.noise, dropped.noise)
    assert 0 < int(dropped.unguided.sum()) < 64
    model = DimeRec(small_config())
    assert model.null_guidance is None and "null_guidance" not in model.state_dict()  # old checkpoints load


def test_a_ranks_slice_of_the_draw_keeps_each_samples_mask():
    draw = NoiseDraw.draw(10, D, 10, torch.Generator().manual_seed(0), guidance_dropout=0.5)
    rows = torch.tensor([1, 4, 7])
    part = draw.rows(rows, "cpu")
    assert torch.equal(part.unguided, draw.unguided[rows]) and torch.equal(part.t, draw.t[rows])
    assert torch.equal(part.noise, draw.noise[rows])


def test_dropped_rows_denoise_with_the_null_guidance_and_the_rest_with_the_gems():
    torch.manual_seed(0)
    model = DimeRec(small_config(guidance_dropout=0.5, gem_weight=0, ssm_weight=0))
    with torch.no_grad():
        model.null_guidance.normal_()
    _, batch = inputs()
    history, mask, target = batch[0], batch[1], batch[2]
    draw = NoiseDraw.draw(B, D, 10, torch.Generator().manual_seed(1))
    unguided = torch.arange(B) % 2 == 0
    draw = NoiseDraw(draw.t, draw.noise, unguided)
    per_sample = model(*batch, draw=draw, reduction="none").recon

    guidance = model.gem(history, mask)
    x0, x_t = model.diffuse(target, draw)
    with_gem = ((x0 - model.dam(x_t, draw.t, guidance)) ** 2).sum(-1)
    with_null = ((x0 - model.dam(x_t, draw.t, model.null_guidance.expand_as(guidance))) ** 2).sum(-1)
    torch.testing.assert_close(per_sample, torch.where(unguided, with_null, with_gem))
    assert not torch.allclose(with_gem, with_null)


def test_the_null_guidance_learns_and_a_model_with_dropout_needs_the_mask():
    torch.manual_seed(0)
    model = DimeRec(small_config(guidance_dropout=0.3))
    _, batch = inputs()
    model(*batch, generator=torch.Generator().manual_seed(2)).total.backward()
    assert model.null_guidance.grad is not None and model.null_guidance.grad.abs().sum() > 0
    plain_draw = NoiseDraw.draw(B, D, 10, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="unguided"):
        model(*batch, draw=plain_draw)


@pytest.mark.parametrize("space", ["sphere", "euclidean"])
def test_sampling_extrapolates_from_the_null_guidance_by_the_scale(space):
    torch.manual_seed(0)
    model = DimeRec(small_config(guidance_dropout=0.2, guidance_scale=2.0, noise_space=space)).eval()
    with torch.no_grad():
        model.null_guidance.normal_()
    _, batch = inputs()
    history, mask = batch[0], batch[1]
    start = torch.randn(B, D, generator=torch.Generator().manual_seed(5))
    guided = model.user_embedding(history, mask, steps=1, start=start)

    # One deterministic step from t = T: the query is the extrapolated x0 estimate itself.
    guidance = model.gem(history, mask)
    x_T = normalize(start) if space == "sphere" else start
    t = torch.full((B,), 10, dtype=torch.long)
    expected = 3.0 * model.dam(x_T, t, guidance) - 2.0 * model.dam(x_T, t, model.null_guidance.expand_as(guidance))
    if space == "sphere":
        expected = normalize(expected)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-6)

    model.config.guidance_scale = 0.0  # no extrapolation: the GEM's guidance alone
    plain = model.user_embedding(history, mask, steps=1, start=start)
    assert not torch.allclose(plain, guided)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(guidance_scale=2.0), "needs model.guidance_dropout"),
        (dict(guidance_dropout=1.0), "guidance_dropout"),
        (dict(guidance_dropout=0.1, guidance_scale=-1.0), "guidance_scale"),
    ],
)
def test_inconsistent_guidance_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**overrides).validate()


def test_the_exported_user_tower_extrapolates_as_the_model_does(tmp_path):
    torch.manual_seed(0)
    model = DimeRec(small_config(guidance_dropout=0.2, guidance_scale=1.5)).eval()
    with torch.no_grad():
        model.null_guidance.normal_()
    _, batch = inputs()
    history, mask = batch[0] * batch[1].unsqueeze(-1), batch[1]
    start = torch.randn(B, D, generator=torch.Generator().manual_seed(5))
    export_tower(UserTower(model, steps=2, query_mode="dam+gem"), model.config.max_history, D, tmp_path / "tower.pt2")
    served = torch.export.load(str(tmp_path / "tower.pt2")).module()(history, mask, start)
    expected = model.queries(history, mask, "dam+gem", steps=2, deterministic=True, start=start)
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-6)
