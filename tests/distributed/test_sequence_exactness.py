"""Sequence mode through the trainer's sharded model, on 1 and 2 ranks (gloo, the table row-wise).

For each GEM variant and the same weights, batch and diffusion draw, every target's four
losses in sequence mode equal the per-prefix model's on that target's window (within 1e-5),
and the two world sizes give the same per-target losses (the sharded lookup and the data plan
do not depend on the world size).
"""

import json

import numpy as np
import pytest

from tests.distributed.conftest import torchrun, two_at_a_time
from tests.distributed.sequence_variants import VARIANTS

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def results(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sequence_exactness")

    def run(world):
        out = root / f"world-{world}.json"
        torchrun(world, "tests.distributed.sequence_exactness_job", str(tiny_dataset), str(out))
        return json.loads(out.read_text())

    return dict(zip((1, 2), two_at_a_time(run, (1, 2))))


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_target_loses_what_its_window_loses_per_prefix(results, world, variant):
    result = results[world][variant]
    sequence, per_prefix = np.array(result["sequence"]), np.array(result["per_prefix"])
    assert sequence.shape == (64, 4), "the global batch's 64 targets, four losses each"
    np.testing.assert_allclose(sequence, per_prefix, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_and_two_ranks_give_each_target_the_same_losses(results, variant):
    one, two = np.array(results[1][variant]["sequence"]), np.array(results[2][variant]["sequence"])
    np.testing.assert_allclose(one, two, rtol=TOLERANCE, atol=TOLERANCE)
    assert results[1][variant]["chunk_ids"] == results[2][variant]["chunk_ids"]
