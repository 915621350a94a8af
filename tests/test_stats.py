"""harness/core/stats.py against references: scipy, hand computation, published values."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from harness.core import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("b,c", [(0, 1), (3, 0), (5, 2), (10, 3), (7, 7), (1, 12), (40, 25), (0, 30)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    assert stats.mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, abs=1e-12)
    greater = scipy_stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert stats.mcnemar_exact_one_sided(b, c) == pytest.approx(greater, abs=1e-12)


def test_mcnemar_by_hand():
    # 3 right -> wrong, 0 wrong -> right: P(X >= 3 | n=3) = 1/8, two-sided 1/4.
    assert stats.mcnemar_exact_one_sided(3, 0) == 0.125
    assert stats.mcnemar_exact(3, 0) == 0.25
    assert stats.mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence


def test_tango_at_zero_is_mcnemar_asymptotic():
    assert stats.tango_z(10, 3, 100, 0.0) == pytest.approx(7 / math.sqrt(13))
    assert stats.tango_z(2, 9, 50, 0.0) == pytest.approx(-7 / math.sqrt(11))


def test_tango_interval_published_example():
    # Bentur et al. (2009) airway data as used by Fagerland, Lydersen & Laake (Stat Med 2014):
    # n12 = 1, n21 = 7, n = 21; Tango asymptotic score interval -0.517 to -0.026.
    lo, hi = stats.tango_interval(1, 7, 21, 0.95)
    assert (round(lo, 3), round(hi, 3)) == (-0.517, -0.026)
    # the interval inverts the test: the statistic equals -/+ z at its ends
    assert stats.tango_z(1, 7, 21, lo) == pytest.approx(1.959964, abs=1e-6)
    assert stats.tango_z(1, 7, 21, hi) == pytest.approx(-1.959964, abs=1e-6)


@pytest.mark.parametrize("b,c,n,d0", [(10, 3, 100, 0.02), (1, 7, 21, -0.1), (0, 0, 50, 0.01), (25, 5, 60, 0.2)])
def test_tango_variance_uses_the_constrained_mle(b, c, n, d0):
    """The q21 inside tango_z maximises the multinomial likelihood under p12 - p21 = d0 (scipy optimiser)."""
    from scipy.optimize import minimize_scalar

    def nll(q):
        return -(b * math.log(q + d0) if b else 0) - (c * math.log(q) if c else 0) - (n - b - c) * math.log(
            1 - 2 * q - d0)

    lo = max(0.0, -d0) + 1e-12
    q = minimize_scalar(nll, bounds=(lo, (1 - d0) / 2 - 1e-12), method="bounded",
                        options={"xatol": 1e-12}).x
    expected = (b - c - n * d0) / math.sqrt(n * (2 * q + d0 * (1 - d0)))
    assert stats.tango_z(b, c, n, d0) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_tango_one_sided_bound_is_between_the_two_sided_ends():
    lo, hi = stats.tango_interval(12, 4, 200, 0.95)
    bound = stats.tango_lower_bound(12, 4, 200, 0.95)  # = lower end of the two-sided 90% interval
    assert lo < bound < (12 - 4) / 200 < hi
    assert bound == pytest.approx(stats.tango_interval(12, 4, 200, 0.90)[0], abs=1e-9)


def test_bootstrap_is_deterministic_and_matches_exact_enumeration():
    values = [0.0, 1.0, 3.0]
    boot = stats.bootstrap_means(values)
    assert boot == stats.bootstrap_means(values)  # fixed seed
    # all 27 equally likely resamples of 3 items, by hand
    means = [sum(t) / 3 for t in itertools.product(values, repeat=3)]
    for threshold in (0.5, 1.0, 4 / 3, 2.0):
        exact = sum(m <= threshold + 1e-12 for m in means) / 27
        estimated = sum(m <= threshold + 1e-12 for m in boot) / len(boot)
        assert estimated == pytest.approx(exact, abs=0.015)  # ~3 Monte Carlo standard errors


def test_bootstrap_interval_close_to_normal_theory():
    rng = random.Random(3)
    diffs = [rng.gauss(0.3, 1.0) for _ in range(400)]
    boot = sorted(stats.bootstrap_means(diffs))
    mean, se = stats.mean_stderr(diffs)
    assert stats.percentile(boot, 0.025) == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
    assert stats.percentile(boot, 0.975) == pytest.approx(mean + 1.96 * se, abs=0.25 * se)


def test_bootstrap_p_inverts_the_percentile_bound():
    rng = random.Random(5)
    boot = sorted(stats.bootstrap_means([rng.gauss(0.2, 1) for _ in range(100)]))
    bound = stats.percentile(boot, 0.05)
    assert stats.bootstrap_p_at_most(boot, bound - 1e-3) < 0.05 <= stats.bootstrap_p_at_most(boot, bound + 1e-3)
    assert stats.bootstrap_p_two_sided([1.0] * 9999) == pytest.approx(2 / 10000)


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    xs = sorted(random.Random(1).random() for _ in range(37))
    for q in (0.0, 0.025, 0.5, 0.9, 1.0):
        assert stats.percentile(xs, q) == pytest.approx(float(np.percentile(xs, 100 * q)))


def test_wilson_textbook_value():
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
