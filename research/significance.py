"""Welch's t-test for "is method A better than method B over seeds", without SciPy.

The two-sided p-value needs the Student t CDF, which is a regularised incomplete beta
function: P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2). The incomplete beta is
evaluated by its continued fraction (modified Lentz), which converges quickly in the
region used here after the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _beta_continued_fraction(a: float, b: float, x: float, iterations: int = 300, eps: float = 1e-15) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, iterations + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


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
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1)
    se_a, se_b = var_a / len(a), var_b / len(b)
    if se_a + se_b == 0:
        t = 0.0 if mean_a == mean_b else math.copysign(math.inf, mean_a - mean_b)
        return WelchResult(mean_a, mean_b, t, float(len(a) + len(b) - 2), 1.0 if t == 0 else 0.0)
    t = (mean_a - mean_b) / math.sqrt(se_a + se_b)
    spread = (se_a**2 / (len(a) - 1) if se_a else 0.0) + (se_b**2 / (len(b) - 1) if se_b else 0.0)
    df = (se_a + se_b) ** 2 / spread
    return WelchResult(mean_a, mean_b, t, df, student_t_two_sided_p(t, df))
