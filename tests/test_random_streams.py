"""Random streams keyed by (seed, purpose, position): no two positions share a stream."""

import pytest
import torch

from dimerec_dist.runtime.random_streams import PURPOSES, generator, seed_for


def test_no_collision_across_epochs_longer_than_a_million_steps():
    # The old key seed * 1_000_003 + epoch * 100_003 + step made (epoch 1, step 0) = (epoch 0, step 100_003).
    seeds = {
        seed_for(0, "noise", epoch, step)
        for epoch in range(3)
        for step in (0, 1, 100_003, 200_006, 999_999, 1_000_003, 1_500_000, 2**40)
    }
    assert len(seeds) == 3 * 8
    assert seed_for(0, "noise", 1, 0) != seed_for(0, "noise", 0, 100_003)
    assert seed_for(1, "noise", 0, 0) != seed_for(0, "noise", 1_000_003 // 100_003, 0)


def test_purposes_and_job_seeds_separate_streams_and_keys_repeat_exactly():
    keys = [(seed, purpose, 5, 7) for seed in (0, 1) for purpose in PURPOSES]
    assert len({seed_for(*key) for key in keys}) == len(keys)
    first = torch.randn(4, generator=generator(3, "start", 12))
    assert torch.equal(first, torch.randn(4, generator=generator(3, "start", 12)))
    assert all(0 <= seed_for(*key) < 2**63 for key in keys)


def test_an_unknown_purpose_is_named():
    with pytest.raises(KeyError, match="unknown random stream 'nois'"):
        seed_for(0, "nois", 1)
