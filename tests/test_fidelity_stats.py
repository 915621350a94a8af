"""The statistics added for issue 17: score-test p-values, power, Holm, clustered units (docs/fidelity.md)."""

from __future__ import annotations

import math
import random

import pytest

from harness.core import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_interval_and_p_value_come_from_the_same_test():
    # b=7, c=1, n=100: Tango's interval excludes 0 while the exact McNemar p is 0.070.
    lo, hi = stats.tango_interval(7, 1, 100, 0.95)
    assert lo > 0
    assert stats.mcnemar_exact(7, 1) == pytest.approx(0.0703, abs=1e-4)
    p = stats.tango_p_two_sided(7, 1, 100)
    assert p < 0.05  # the score test, which the interval inverts, agrees with the interval
    assert p == pytest.approx(scipy_stats.chi2.sf(6**2 / 8, 1))  # at 0 it is McNemar's asymptotic test


@pytest.mark.parametrize("b,c,n", [(7, 1, 100), (12, 4, 200), (1, 7, 21), (30, 20, 164), (3, 0, 50)])
def test_score_p_below_alpha_exactly_when_the_interval_excludes_zero(b, c, n):
    for level in (0.90, 0.95, 0.99):
        lo, hi = stats.tango_interval(b, c, n, level)
        assert (stats.tango_p_two_sided(b, c, n) < 1 - level) == (lo > 0 or hi < 0)


def test_exact_floor():
    assert stats.exact_mcnemar_floor(0.05) == 5  # 0.5**5 = 0.031 < 0.05 <= 0.5**4
    assert stats.exact_mcnemar_floor(0.05, sided=2) == 6
    assert stats.exact_mcnemar_floor(0.01) == 7


def test_mde_binary_has_the_promised_power_by_simulation():
    n, psi, alpha = 400, 0.2, 0.05
    delta = stats.mde_paired_binary(n, psi, alpha)
    rng = random.Random(4)
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    sims, hits = 2000, 0
    for _ in range(sims):
        b = c = 0
        for _ in range(n):
            u = rng.random()
            b += u < p10
            c += p10 <= u < p10 + p01
        hits += 1 - stats.normal_cdf(stats.tango_z(b, c, n, 0.0)) < alpha
    assert hits / sims == pytest.approx(0.8, abs=0.04)


def test_mde_binary_floor_for_164_items():
    # 164 HumanEval problems, identical runs: nothing below 5 items (3.05 points) can ever be significant
    assert stats.mde_paired_binary(164, 0.0, 0.05) * 100 == pytest.approx(500 / 164)
    assert stats.mde_paired_binary(164, 0.1, 0.05) * 100 > 5  # with 10% of items flipping, about 6 points


def test_mde_mean_matches_the_normal_power_formula():
    d = stats.mde_paired_mean(1.0, 80, 0.05)
    z = (d - 0) / (1.0 / math.sqrt(80))
    assert scipy_stats.norm.cdf(z - scipy_stats.norm.ppf(0.95)) == pytest.approx(0.8)
    assert stats.mde_paired_mean(1.0, 80, 0.05, margin=0.2) == pytest.approx(d + 0.2)


def test_holm_against_statsmodels_definition():
    p = [0.01, 0.04, 0.03, 0.20]
    out = stats.holm(p, 0.05)
    # 0.01 at 0.05/4 rejects; 0.03 at 0.05/3 fails and stops; 0.04 and 0.20 are shown at that stopping level
    assert [lvl for lvl, _ in out] == pytest.approx([0.05 / 4, 0.05 / 3, 0.05 / 3, 0.05 / 3])
    assert [r for _, r in out] == [True, False, False, False]  # 0.03 >= 0.05/3 stops the procedure
    assert [r for _, r in stats.holm([0.001, 0.01, 0.04], 0.05)] == [True, True, True]
    assert stats.holm([0.03], 0.05) == [(0.05, True)]


def test_weighted_mean_is_pooled_and_se_is_cluster_robust():
    # Q81 turns 10 and 2 (mean 6, 2 rows), Q82 turn 1 = 4 (1 row): pooled 16/3
    mean, se = stats.weighted_mean_stderr([6.0, 4.0], [2, 1])
    assert mean == pytest.approx(16 / 3)
    # by hand: sqrt(2/1 * ((2*(6-16/3))^2 + (1*(4-16/3))^2)) / 3
    assert se == pytest.approx(math.sqrt(2 * ((2 * (6 - 16 / 3)) ** 2 + (4 - 16 / 3) ** 2)) / 3)
    vals = [1.0, 3.0, 4.0, 8.0]
    assert stats.weighted_mean_stderr(vals, [1] * 4) == pytest.approx(stats.mean_stderr(vals))


def test_cluster_se_exceeds_the_naive_se_when_rows_correlate():
    rng = random.Random(2)
    clusters = [rng.gauss(5, 2) for _ in range(60)]
    rows = [(i, c + rng.gauss(0, 0.2)) for i, c in enumerate(clusters) for _ in range(2)]
    naive = stats.mean_stderr([v for _, v in rows])[1]
    units = [sum(v for j, v in rows if j == i) / 2 for i in range(60)]
    clustered = stats.weighted_mean_stderr(units, [2] * 60)[1]
    assert clustered > 1.3 * naive  # ~sqrt(2) for two nearly identical rows per cluster


def test_weighted_bootstrap_matches_exact_enumeration():
    import itertools

    base, bw = [6.0, 4.0, 5.0], [2, 1, 2]
    new, nw = [7.0, 4.0, 6.0], [2, 2, 2]
    boot = stats.bootstrap_weighted_diffs(base, bw, new, nw)

    def pooled(v, w, idx):
        return sum(v[i] * w[i] for i in idx) / sum(w[i] for i in idx)

    exact = [pooled(new, nw, t) - pooled(base, bw, t) for t in itertools.product(range(3), repeat=3)]
    assert sum(boot) / len(boot) == pytest.approx(sum(exact) / 27, abs=0.01)
    assert stats.percentile(sorted(boot), 0.5) == pytest.approx(sorted(exact)[13], abs=0.05)
