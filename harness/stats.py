"""Small statistics for per-item scores: means, standard errors, intervals.

The standard error of a mean over items is the sample standard deviation over
sqrt(n) (as lm-eval reports it); the 95% interval is the normal one, and for
proportions the Wilson interval, which behaves at 0 and 1 and at small n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def normal_interval(mean: float, stderr: float, z: float = Z95) -> tuple[float, float]:
    return mean - z * stderr, mean + z * stderr
