"""Small statistics for per-item scores: means, standard errors, intervals.

The standard error of a mean over items is the sample standard deviation over
sqrt(n) (as lm-eval reports it); the 95% interval is the normal one, and for
proportions the Wilson interval, which behaves at 0 and 1 and at small n.

Paired comparisons of two runs on the same items (used by ``harness report
--baseline`` and ``harness check``):

* binary per-item scores: Tango's score interval for the difference in
  accuracy and the p-value of the same score test (so the two agree), exact
  McNemar (a binomial test on the discordant pairs) beside it, and Tango's
  score test for a non-zero margin ("did it drop by more than 1 point");
* continuous per-item scores (MT-Bench ratings): the paired bootstrap (items
  resampled with a fixed seed), percentile interval and the p-values that
  invert it;
* pooled metrics, whose rows nest in the sampled unit (MT-Bench turns in a
  question): the weighted mean with a cluster-robust standard error and the
  paired cluster bootstrap;
* power (the minimum detectable effect at 80% power, with the exact McNemar
  floor) and Holm's step-down procedure for a gate over several metrics.

Everything here is pure Python plus numpy; scipy is only used by the tests,
as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

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


def metric_means(results: Sequence[Any], metrics: Sequence[Any]) -> dict[str, float]:
    """``{name: mean, name_stderr: se}`` for each MetricSpec over scored results (``r.scores[spec.key]``)."""
    out: dict[str, float] = {}
    for m in metrics:
        out[m.name], out[f"{m.name}_stderr"] = mean_stderr([r.scores[m.key] for r in results])
    return out


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


# -- distributions (no scipy needed: the base install stays light) ------------------------------

_NORMAL = NormalDist()


def normal_cdf(x: float) -> float:
    return _NORMAL.cdf(x)


def normal_ppf(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def binom_upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact (integer arithmetic)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


# -- paired binary scores: McNemar and Tango -----------------------------------------------------

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs.

    ``b`` items went right -> wrong, ``c`` wrong -> right. Under H0 (same
    accuracy) each discordant pair is a fair coin, so p = min(1, 2 P(X >= max(b, c)))
    with X ~ Bin(b + c, 1/2); equal to ``scipy.stats.binomtest(b, b + c).pvalue``.
    """
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_upper_tail(max(b, c), n))


def mcnemar_exact_one_sided(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "more right -> wrong than wrong -> right": P(X >= b)."""
    return binom_upper_tail(b, b + c)


def tango_z(b: int, c: int, n: int, delta0: float) -> float:
    """Tango's (1998) score statistic for H0: (b - c) / n == delta0, paired binary data.

    ``b``, ``c`` are the discordant counts (right -> wrong, wrong -> right) over
    ``n`` paired items, so (b - c) / n is the drop in accuracy. The variance is
    taken under H0 with the constrained maximum-likelihood estimate of the
    wrong -> right cell probability (Tango, Stat Med 1998;17:891; as written
    out in Fagerland, Lydersen & Laake, Stat Med 2014;33:2850). At delta0 = 0
    it is McNemar's asymptotic statistic (b - c) / sqrt(b + c).
    """
    a_ = 2 * n
    b_ = -b - c + (2 * n - b + c) * delta0
    c_ = -c * delta0 * (1 - delta0)
    q21 = (math.sqrt(max(0.0, b_ * b_ - 4 * a_ * c_)) - b_) / (2 * a_)
    var = n * (2 * q21 + delta0 * (1 - delta0))
    diff = b - c - n * delta0
    if var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


def tango_interval(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` confidence interval for the paired drop (b - c) / n, by
    inverting Tango's score test (Z is decreasing in delta0, so bisection)."""
    z = normal_ppf(0.5 + level / 2)
    return _tango_bound(b, c, n, z), _tango_bound(b, c, n, -z)


def tango_lower_bound(b: int, c: int, n: int, level: float = 0.95) -> float:
    """One-sided ``level`` lower confidence bound for the paired drop (b - c) / n."""
    return _tango_bound(b, c, n, normal_ppf(level))


def _tango_bound(b: int, c: int, n: int, z: float) -> float:
    """The delta0 in [-1, 1] where tango_z(delta0) crosses ``z``."""
    lo, hi = -1.0, 1.0
    if tango_z(b, c, n, lo) <= z:
        return lo
    if tango_z(b, c, n, hi) >= z:
        return hi
    for _ in range(100):
        mid = (lo + hi) / 2
        if tango_z(b, c, n, mid) > z:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# -- paired continuous scores: bootstrap ---------------------------------------------------------

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20231009


def bootstrap_means(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Means of ``resamples`` resamples (with replacement, fixed seed) of ``values``.

    For paired data pass the per-item differences: resampling items keeps the
    pairing (the paired bootstrap). Deterministic for a given seed.
    """
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return []
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // x.size)  # bound memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = x[idx].mean(axis=1)
    return out.tolist()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)


def bootstrap_p_at_most(boot: Sequence[float], threshold: float) -> float:
    """One-sided bootstrap p-value for H0: mean <= threshold (against mean > threshold).

    The share of resampled means at or below the threshold, with the +1
    correction so it is never 0. It rejects at level alpha exactly when the
    one-sided (1 - alpha) percentile lower bound exceeds the threshold.
    """
    return (sum(1 for v in boot if v <= threshold) + 1) / (len(boot) + 1)


def bootstrap_p_two_sided(boot: Sequence[float], null: float = 0.0) -> float:
    """Two-sided bootstrap p-value for H0: mean == null (inverts the percentile interval)."""
    below = sum(1 for v in boot if v <= null) + 1
    above = sum(1 for v in boot if v >= null) + 1
    return min(1.0, 2 * min(below, above) / (len(boot) + 1))


def tango_p_two_sided(b: int, c: int, n: int, delta0: float = 0.0) -> float:
    """Two-sided p-value of Tango's score test for H0: (b - c) / n == delta0.

    This is the test that ``tango_interval`` inverts, so the two always agree:
    the (1 - alpha) interval excludes delta0 exactly when p < alpha. At
    delta0 = 0 it is McNemar's asymptotic (chi-square) test.
    """
    return min(1.0, 2 * (1 - normal_cdf(abs(tango_z(b, c, n, delta0)))))


# -- power: the smallest effect a paired comparison can detect ----------------------------------

POWER = 0.8


def exact_mcnemar_floor(alpha: float, sided: int = 1) -> int:
    """The fewest discordant pairs, all in one direction, with which the exact McNemar test can reject.

    With k pairs all right -> wrong the one-sided p is 0.5**k (two-sided twice that),
    so no drop of fewer than k items is ever significant: 5 items at alpha 0.05 one-sided.
    """
    k = 1
    while sided * 0.5**k >= alpha:
        k += 1
    return k


def mde_paired_binary(n: int, discordance: float, alpha: float, *, margin: float = 0.0, sided: int = 1,
                      power: float = POWER) -> float:
    """Minimum detectable drop (as a proportion) for paired 0/1 scores on ``n`` items.

    The smallest true drop delta = p10 - p01 that the score test of
    H0: drop <= margin rejects with probability ``power``, given the share of
    discordant items psi = p10 + p01 (Connor 1987's normal approximation:
    delta - margin = (z_a sqrt(psi - margin^2) + z_b sqrt(psi - delta^2)) / sqrt(n)),
    and never below what the exact McNemar test can resolve (``exact_mcnemar_floor`` / n).
    """
    if n <= 0:
        return math.nan
    z_a, z_b = normal_ppf(1 - alpha / sided), normal_ppf(power)
    psi = min(1.0, max(discordance, 0.0))
    delta = margin
    for _ in range(100):  # fixed point: the right-hand side shrinks as delta grows
        nxt = margin + (z_a * math.sqrt(max(psi - margin**2, 0.0)) + z_b * math.sqrt(max(psi - delta**2, 0.0))) \
            / math.sqrt(n)
        if abs(nxt - delta) < 1e-12:
            break
        delta = nxt
    return min(1.0, max(delta, margin + exact_mcnemar_floor(alpha, sided) / n))


def mde_paired_mean(sd_diff: float, n: int, alpha: float, *, margin: float = 0.0, sided: int = 1,
                    power: float = POWER) -> float:
    """Minimum detectable mean drop for paired continuous scores: margin + (z_a + z_b) sd / sqrt(n).

    ``sd_diff`` is the standard deviation of the per-unit paired differences
    (per cluster when items nest), ``n`` the number of units.
    """
    if n < 2 or not math.isfinite(sd_diff):
        return math.nan
    return margin + (normal_ppf(1 - alpha / sided) + normal_ppf(power)) * sd_diff / math.sqrt(n)


# -- multiplicity --------------------------------------------------------------------------------

def holm(pvalues: Sequence[float], alpha: float) -> list[tuple[float, bool]]:
    """Holm's (1979) step-down procedure: (level, rejected) per test, in input order.

    The smallest p is tested at alpha / m, the next at alpha / (m - 1), ... up
    to alpha; testing stops at the first p that is not below its level, and no
    later test is rejected. The family-wise error rate is at most alpha. A test
    after the stop is reported at the stopping level (its p, no smaller than the
    one that failed, fails that level too).
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: (pvalues[i], i))
    out: list[tuple[float, bool]] = [(alpha, False)] * m
    stop: float | None = None
    for rank, i in enumerate(order):
        if stop is not None:
            out[i] = (stop, False)
            continue
        level = alpha / (m - rank)
        if pvalues[i] < level:
            out[i] = (level, True)
        else:
            out[i], stop = (level, False), level
    return out


# -- clustered units: weighted means -------------------------------------------------------------

def weighted_mean_stderr(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """Pooled mean sum(w v) / sum(w) over units with cluster-robust standard error.

    Each unit (a cluster: an MT-Bench question holding its judged turns) carries
    the mean ``v`` of its ``w`` rows, so the estimate is the mean over all rows
    pooled. Rows within a unit are not independent; the standard error is the
    ratio estimator's, over units: sqrt(n / (n - 1) * sum(w^2 (v - mean)^2)) / sum(w).
    With all weights 1 it is ``mean_stderr``.
    """
    n, total = len(values), float(sum(weights))
    if n == 0 or total <= 0:
        return math.nan, math.nan
    mean = sum(w * v for v, w in zip(values, weights, strict=True)) / total
    if n == 1:
        return mean, math.nan
    ss = sum((w * (v - mean)) ** 2 for v, w in zip(values, weights, strict=True))
    return mean, math.sqrt(n / (n - 1) * ss) / total


def bootstrap_weighted_diffs(base: Sequence[float], base_w: Sequence[float], new: Sequence[float],
                             new_w: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                             seed: int = BOOTSTRAP_SEED) -> list[float]:
    """Paired cluster bootstrap of ``pooled(new) - pooled(base)``: units are resampled, rows stay inside them."""
    import numpy as np

    x, wx = np.asarray(base, dtype=float), np.asarray(base_w, dtype=float)
    y, wy = np.asarray(new, dtype=float), np.asarray(new_w, dtype=float)
    if x.size == 0:
        return []
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = ((y * wy)[idx].sum(1) / wy[idx].sum(1)) - ((x * wx)[idx].sum(1) / wx[idx].sum(1))
    return out.tolist()
