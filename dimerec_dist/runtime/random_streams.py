"""Every random draw of training and evaluation, keyed by what it is for and where it falls.

A stream's seed is a hash of (job seed, purpose, *position) through numpy's SeedSequence,
so two streams never share a seed unless their whole key is equal: no arithmetic key like
`seed * 1_000_003 + epoch * 100_003 + step`, which repeats once an epoch passes 100,003
steps. A resumed run, or one on another world size, draws exactly what it would have.

    generator(seed, "noise", epoch, step)      # the step's diffusion t and eps (global batch)
    seed_for(seed, "dropout", step, rank)      # torch's global RNG for the step's dropout
    generator(seed, "start", user)             # x_T of a user at evaluation and serving
    generator(seed, "reverse", user)           # the reverse steps' noise of a batch led by `user`
"""

from __future__ import annotations

import numpy as np
import torch

# A fixed number per purpose: part of every key, so the streams of two purposes never meet.
# Never renumber one: that changes every result drawn from it.
PURPOSES = {"noise": 1, "dropout": 2, "start": 3, "reverse": 4}


def seed_for(seed: int, purpose: str, *position: int) -> int:
    """A 63-bit seed for (seed, purpose, *position); positions are non-negative integers."""
    if purpose not in PURPOSES:
        raise KeyError(f"unknown random stream {purpose!r} (known: {', '.join(PURPOSES)})")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(PURPOSES[purpose], *map(int, position)))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, purpose: str, *position: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed_for(seed, purpose, *position))
