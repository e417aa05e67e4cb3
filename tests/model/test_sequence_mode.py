"""Sequence mode computes, for every target, what the per-prefix mode computes on its window.

The chunks come from the data path's own cut (samples.cut_chunks) of a log with long and
short users, runs split across chunks, and chunks that start mid-user; the per-prefix side
reads the windows the per-prefix data path cuts (samples.window) for the same targets.
For each GEM variant, with the same weights and diffusion draw: the GEM's interests, the
DAM's outputs, the per-target losses and the dense gradients agree within 1e-5.
"""

import numpy as np
import pytest
import torch

from dimerec_dist.config import ModelConfig
from dimerec_dist.data.samples import cut_chunks, window
from dimerec_dist.model import DimeRec, NoiseDraw
from dimerec_dist.model.sequence_windows import QueryWindows

N, D, K, ITEMS, T_STEPS = 6, 16, 3, 40, 20
VARIANTS = {  # name: model overrides
    "comirec_sa_input": dict(gem="comirec_sa", attention_positions="input"),
    "comirec_sa_bias": dict(gem="comirec_sa", attention_positions="bias"),
    "comirec_dr": dict(gem="comirec_dr"),
    "sasrec": dict(gem="sasrec"),
    "mean": dict(gem="mean"),
    "last_k": dict(gem="last_k"),
}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def log_and_samples(seed=0):
    """A flat log of users of 2..30 items and some of their targets, in runs as a batch slice holds them:
    whole users, a user's tail (resumed mid-user), and a run cut off by the slice's end."""
    rng = np.random.default_rng(seed)
    lengths = [30, 2, 11, 7, 3, 25]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = rng.integers(1, ITEMS + 1, offsets[-1])
    starts, ends = [], []
    for user, (first, last) in enumerate([(1, 30), (1, 2), (4, 11), (1, 5), (1, 3), (9, 17)]):
        for p in range(first, last):
            starts.append(offsets[user])
            ends.append(offsets[user] + p)
    return flat, np.array(starts), np.array(ends)


def model_for(variant):
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=D,
        max_history=N,
        num_interests=K,
        dropout=0.0,
        dam_hidden=32,
        diffusion_steps=T_STEPS,
        **VARIANTS[variant],
    )
    model = DimeRec(config).eval()
    with torch.no_grad():  # untrained biases are zero: give the position terms something to do
        for name, parameter in model.named_parameters():
            if "position" in name:
                parameter.normal_(std=0.5)
    return model


def both_modes(variant, chunk_targets=8):
    flat, starts, ends = log_and_samples()
    span_limited = VARIANTS[variant]["gem"] == "sasrec"
    chunks = cut_chunks(flat, starts, ends, N, chunk_targets, span_limited)
    histories = chunks.histories(N)
    if not span_limited:  # the windows are the per-prefix data path's own
        cut = window(flat, starts, ends, N)
        np.testing.assert_array_equal(histories.ids, cut.ids)
        np.testing.assert_array_equal(histories.lengths, cut.lengths)
    np.testing.assert_array_equal(chunks.targets, flat[ends])
    table = torch.randn(ITEMS + 1, D, generator=torch.Generator().manual_seed(1))
    table[0] = 0
    chunk_mask = torch.from_numpy(np.arange(chunks.ids.shape[1])[None] < chunks.lengths[:, None])
    history_mask = torch.from_numpy(np.arange(N)[None] < histories.lengths[:, None])
    windows = QueryWindows(torch.from_numpy(chunks.queries), torch.from_numpy(chunks.query_mask), N)
    return table, chunks, chunk_mask, histories, history_mask, windows


def loss_inputs(table, chunks):
    targets = torch.from_numpy(chunks.targets)
    negative_ids = torch.arange(1, ITEMS + 1, 3)
    draw = NoiseDraw.draw(len(targets), D, T_STEPS, torch.Generator().manual_seed(2))
    return table[targets], targets, table[negative_ids], negative_ids, draw


@pytest.mark.parametrize("variant", VARIANTS)
def test_interests_dam_outputs_and_per_target_losses_equal_the_per_prefix_ones(variant):
    model = model_for(variant)
    table, chunks, chunk_mask, histories, history_mask, windows = both_modes(variant)
    items, history = table[chunks.ids], table[histories.ids]
    target, target_ids, negatives, negative_ids, draw = loss_inputs(table, chunks)

    per_prefix = model.gem(history, history_mask)
    sequence = model.gem.sequence(items, chunk_mask, windows)
    assert sequence.shape == (len(target_ids), K, D)
    torch.testing.assert_close(sequence, per_prefix, **TOLERANCE)

    _, x_t = model.diffuse(target, draw)
    torch.testing.assert_close(model.dam(x_t, draw.t, sequence), model.dam(x_t, draw.t, per_prefix), **TOLERANCE)

    options = dict(draw=draw, reduction="none")
    one_pass = model.forward_sequence(
        items, chunk_mask, windows, target, target_ids, negatives, negative_ids, **options
    )
    windowed = model(history, history_mask, target, target_ids, negatives, negative_ids, **options)
    for name in ("total", "gem", "recon", "ssm"):
        assert getattr(one_pass, name).shape == (len(target_ids),)
        torch.testing.assert_close(getattr(one_pass, name), getattr(windowed, name), **TOLERANCE)


@pytest.mark.parametrize("variant", ["comirec_sa_bias", "comirec_dr", "sasrec"])
def test_a_step_in_either_mode_gives_the_same_gradients(variant):
    """Training is the same, not only the forward: the mean loss's gradients on every dense
    parameter and on the embeddings of the items (through the chunk and the windows alike)."""
    table, chunks, chunk_mask, histories, history_mask, windows = both_modes(variant)
    gradients = []
    for mode in ("sequence", "per_prefix"):
        model = model_for(variant).train()  # dropout is 0: train mode draws nothing
        table_copy = table.clone().requires_grad_(True)
        target, target_ids, negatives, negative_ids, draw = loss_inputs(table_copy, chunks)
        if mode == "sequence":
            losses = model.forward_sequence(
                table_copy[chunks.ids], chunk_mask, windows, target, target_ids, negatives, negative_ids, draw=draw
            )
        else:
            losses = model(
                table_copy[histories.ids], history_mask, target, target_ids, negatives, negative_ids, draw=draw
            )
        losses.total.backward()
        gradients.append({"table": table_copy.grad, **{n: p.grad for n, p in model.named_parameters()}})
    sequence, per_prefix = gradients
    assert sequence.keys() == per_prefix.keys()
    for name in sequence:
        torch.testing.assert_close(sequence[name], per_prefix[name], **TOLERANCE, msg=name)


def test_chunks_read_each_item_once_where_windows_read_it_up_to_n_times():
    _, chunks, _, histories, _, _ = both_modes("comirec_sa_bias", chunk_targets=32)
    assert chunks.lengths.sum() < histories.lengths.sum() / 2


def test_a_sasrec_chunk_spans_at_most_max_history_items_before_a_query():
    _, chunks, _, histories, _, _ = both_modes("sasrec")
    assert chunks.queries[chunks.query_mask].max() == N - 1
    assert chunks.query_counts.max() <= N
    model = model_for("sasrec")
    too_long = QueryWindows(torch.tensor([[N]]), torch.tensor([[True]]), N)
    with pytest.raises(ValueError, match="more than max_history"):
        model.gem.sequence(torch.randn(1, N + 2, D), torch.ones(1, N + 2, dtype=torch.bool), too_long)
