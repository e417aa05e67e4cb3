"""History windows, negatives, the KJT batch and evaluation users."""

import numpy as np
import pyarrow as pa
import pytest

from dimerec_dist.data.batch import FEATURES, NegativeSampler, make_batch
from dimerec_dist.data.samples import EvaluationUsers, window
from dimerec_dist.data.schema import EVAL_SCHEMA


def test_window_is_left_aligned_and_keeps_the_most_recent_items():
    flat = np.array([5, 6, 7, 8, 9])
    out = window(flat, np.array([0, 3]), np.array([4, 4]), 3)
    assert out.ids.tolist() == [[6, 7, 8], [8, 0, 0]] and out.lengths.tolist() == [3, 1]


def test_negative_sampler_is_deterministic_in_range_and_log_q_is_expected_count():
    uniform = NegativeSampler("uniform", num_items=50, count=200, seed=3)
    draw = uniform.draw(epoch=1, step=7)
    assert np.array_equal(draw, uniform.draw(1, 7)) and not np.array_equal(draw, uniform.draw(1, 8))
    assert draw.min() >= 1 and draw.max() <= 50
    assert np.allclose(np.exp(uniform.log_q[1:]), 200 / 50)
    popularity = np.array([1000] + [1] * 49)
    popular = NegativeSampler("popularity", num_items=50, count=2000, popularity=popularity, alpha=1.0)
    draw = popular.draw(0, 0)
    assert (draw == 1).mean() > 0.8, "item 1 holds ~95% of the weight"
    assert np.isclose(np.exp(popular.log_q[1:]).sum(), 2000)
    with pytest.raises(ValueError, match="unknown negative sampler"):
        NegativeSampler("hard", 10, 5)


def test_make_batch_builds_the_three_features():
    history = window(np.array([1, 2, 3, 4, 5]), np.array([0, 3]), np.array([2, 4]), 3)
    batch = make_batch(history, np.array([3, 5]), np.array([9, 8, 9, 7]), log_q=np.log(np.arange(1, 11, dtype=float)))
    kjt = batch.kjt.to_dict()
    assert list(batch.kjt.keys()) == list(FEATURES)
    assert kjt["history"].values().tolist() == [1, 2, 4] and kjt["history"].lengths().tolist() == [2, 1]
    assert kjt["target"].values().tolist() == [3, 5]
    # A repeated negative is looked up once; its rows spread it back over the draw.
    assert kjt["negatives"].values().tolist() == [7, 8, 9] and kjt["negatives"].lengths().tolist() == [3, 0]
    assert kjt["negatives"].values()[batch.negative_rows].tolist() == batch.negative_ids.tolist() == [9, 8, 9, 7]
    assert batch.mask.tolist() == [[True, True, False], [True, False, False]]
    assert np.allclose(batch.negative_log_q.numpy(), np.log([10, 9, 10, 8]))


def test_evaluation_users_keep_full_history_for_exclusion():
    table = pa.table(
        [pa.array([0, 1]), pa.array([[1, 2, 3, 4], [5]], pa.list_(pa.int64())), pa.array([6, 7])], schema=EVAL_SCHEMA
    )
    users = EvaluationUsers(table, max_history=2)
    history, seen, targets = users.batch(np.array([0, 1]))
    assert history.ids.tolist() == [[3, 4], [5, 0]]
    assert [s.tolist() for s in seen] == [[1, 2, 3, 4], [5]] and targets.tolist() == [6, 7]
