"""Welch's t-test for "is method A better than method B over seeds": SciPy's, with the
case SciPy leaves undefined (no spread in either group) decided here, as the reports read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass
class WelchResult:
    mean_a: float
    mean_b: float
    t: float
    df: float
    p_two_sided: float


def welch_t_test(a: list[float], b: list[float]) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) against mean(b); needs two or more values each."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 values per group, got {len(a)} and {len(b)}")
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    if all(x == a[0] for x in a) and all(x == b[0] for x in b):  # no spread: SciPy says nan
        t = 0.0 if mean_a == mean_b else math.copysign(math.inf, mean_a - mean_b)
        return WelchResult(mean_a, mean_b, t, float(len(a) + len(b) - 2), 1.0 if t == 0 else 0.0)
    result = stats.ttest_ind(a, b, equal_var=False)
    return WelchResult(mean_a, mean_b, float(result.statistic), float(result.df), float(result.pvalue))
