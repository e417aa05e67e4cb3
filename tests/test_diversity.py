"""Diversity of top-k lists: distinct categories and intra-list distance."""

import numpy as np
import pytest

from dimerec_dist.evaluation.diversity import diversity


def test_one_category_has_no_distance_and_all_different_has_full_distance():
    categories = np.array([-1, 0, 0, 0, 1, 2, 3])
    same = diversity(np.array([[1, 2, 3]]), categories)
    assert same == {"categories@3": 1.0, "ild@3": 0.0}
    spread = diversity(np.array([[1, 4, 5, 6]]), categories)
    assert spread == {"categories@4": 4.0, "ild@4": 1.0}


def test_mixed_lists_average_over_users():
    categories = np.array([-1, 0, 0, 1, 1])
    result = diversity(np.array([[1, 2, 3], [3, 4, 1]]), categories)
    # each list: one same-category pair of three -> ILD 2/3; two categories each
    assert result["categories@3"] == 2.0 and result["ild@3"] == pytest.approx(2 / 3)
