"""The paired report's statistics (issue 17): one test per interval and p-value, the rule, power, units."""

from __future__ import annotations

import statistics

import pytest
from test_report_synth import MT_SPECS, gsm8k, make_run

from harness.cli import main
from harness.core import stats
from harness.readout.compare import compare, load_run

BASE = [1] * 50 + [0] * 50  # 100 items
NEW = [0] * 7 + [1] * 43 + [1] + [0] * 49  # 7 right -> wrong, 1 wrong -> right


def _pair(tmp_path):
    a = load_run(make_run(tmp_path, "a", gsm8k(BASE)))
    b = load_run(make_run(tmp_path, "b", gsm8k(NEW)))
    return compare(b.tasks["gsm8k"], a.tasks["gsm8k"], a.tasks["gsm8k"].specs[0])


def test_interval_and_p_value_agree_and_the_exact_test_is_shown_apart(tmp_path):
    p = _pair(tmp_path)
    assert (p.worse, p.better, p.n) == (7, 1, 100)
    assert p.high < 0  # Tango's interval of the difference excludes 0 ...
    assert p.p < 0.05 and p.p == pytest.approx(stats.tango_p_two_sided(7, 1, 100))  # ... and so does its p
    assert p.p_exact == pytest.approx(0.0703, abs=1e-4)  # the exact McNemar p, labelled as such
    assert not p.significant  # the gate's rule: both tests must reject


def test_report_shows_both_p_values_the_rule_and_the_detectable_effect(tmp_path, capsys):
    a, b = make_run(tmp_path, "a", gsm8k(BASE)), make_run(tmp_path, "b", gsm8k(NEW))
    assert main(["report", str(b), "--baseline", str(a)]) == 0
    out = capsys.readouterr().out
    assert "exact McNemar p" in out and "p=0.070" in out and "p=0.034" in out
    assert "Tango score" in out
    assert "significant" in out and "both" in out  # the rule is spelled out in the legend
    assert "harness check" in out  # and the gate's rule beside it
    assert "MDE" in out
    mde = 100 * stats.mde_paired_binary(100, 0.08, 0.05, sided=2)
    assert f"{mde:.1f}" in out


def test_continuous_comparison_states_its_sampled_unit_and_mde(tmp_path):
    base = {f"m{i}": {"score": float(i % 7 + 2)} for i in range(40)}
    new = {f"m{i}": {"score": float(i % 7 + 2) - (0.5 if i % 2 else 0.0)} for i in range(40)}
    a = load_run(make_run(tmp_path, "a", {"mt_bench": {"scores": base, "specs": MT_SPECS}}))
    b = load_run(make_run(tmp_path, "b", {"mt_bench": {"scores": new, "specs": MT_SPECS}}))
    p = compare(b.tasks["mt_bench"], a.tasks["mt_bench"], MT_SPECS[0])
    assert p.p_exact is None and p.significant == (p.p < 0.05)
    assert p.mde == pytest.approx(stats.mde_paired_mean(statistics.stdev([0.0, -0.5] * 20), 40, 0.05, sided=2))
    assert p.unit == "item"


# -- pooled metrics: rows nested in units (MT-Bench turns in questions) -------------------------------

def _pooled_run(root, name, rows):
    """rows: question -> list of valid turn ratings; the item carries their mean and count."""
    from harness.core.records import MetricSpec

    spec = MetricSpec("score", "score", "continuous", 1.0, primary=True, unit="question", weight="score_rows")
    scores = {q: {"score": sum(r) / len(r), "score_rows": float(len(r))} for q, r in rows.items()}
    return make_run(root, name, {"mt_bench": {"scores": scores, "specs": (spec,)}}), spec


def test_pooled_estimate_is_the_mean_over_rows_with_a_clustered_interval(tmp_path):
    from harness.readout.compare import estimate

    path, spec = _pooled_run(tmp_path, "a", {"q81": [10.0, 2.0], "q82": [4.0]})
    est = estimate(load_run(path).tasks["mt_bench"], spec)
    assert est.value == pytest.approx(16 / 3) and est.method == "clustered"  # FastChat's 5.33, not 5.00


def test_gate_on_a_pooled_metric_uses_the_cluster_bootstrap(tmp_path, capsys):
    import random

    rng = random.Random(3)
    base_rows = {f"q{i}": [rng.uniform(3, 9), rng.uniform(3, 9)] for i in range(80)}
    worse_rows = {q: [r - 1.0 + rng.gauss(0, 0.3) for r in rs] for q, rs in base_rows.items()}
    worse_rows["q0"] = worse_rows["q0"][:1]  # one failed turn-2 judgment
    base, _ = _pooled_run(tmp_path, "base", base_rows)
    worse, _ = _pooled_run(tmp_path, "worse", worse_rows)
    code = main(["check", str(worse), "--baseline", str(base)])
    out = capsys.readouterr().out
    assert code == 1 and "paired cluster bootstrap" in out and "80 paired questions" in out


# -- a generic cluster field: several items drawn from one source (lm-eval documents per passage) ----

def _with_clusters(run_dir, clusters):
    """Rewrite a synthetic run's samples so each item names its cluster in info (as a task would)."""
    import json

    path = run_dir / "gsm8k.samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["info"] = {"cluster": clusters[row["id"]]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_items_sharing_a_cluster_are_one_unit(tmp_path):
    from harness.readout.compare import estimate

    # 6 items from 2 passages: p0 = 1,1,1,1 (4 items), p1 = 0,0 (2 items)
    correct = [1, 1, 1, 1, 0, 0]
    clusters = {f"q{i:03d}": ("p0" if i < 4 else "p1") for i in range(6)}
    run = load_run(_with_clusters(make_run(tmp_path, "a", gsm8k(correct)), clusters))
    task = run.tasks["gsm8k"]
    est = estimate(task, task.specs[0])
    assert est.value == pytest.approx(100 * 4 / 6)  # the item mean is unchanged ...
    assert est.method == "clustered" and est.n == 2  # ... but the interval rests on 2 passages
    mean, se = stats.weighted_mean_stderr([1.0, 0.0], [4, 2])
    assert est.high - est.low == pytest.approx(2 * 1.959963984540054 * se * 100)


def test_paired_test_on_clusters_resamples_passages(tmp_path):
    base = [1] * 40 + [0] * 40
    new = [0] * 10 + [1] * 30 + [0] * 40
    clusters = {f"q{i:03d}": f"p{i // 4}" for i in range(80)}  # 20 passages of 4 documents
    a = load_run(_with_clusters(make_run(tmp_path, "a", gsm8k(base)), clusters))
    b = load_run(_with_clusters(make_run(tmp_path, "b", gsm8k(new)), clusters))
    p = compare(b.tasks["gsm8k"], a.tasks["gsm8k"], a.tasks["gsm8k"].specs[0])
    assert p.test == "paired cluster bootstrap" and p.n == 20
    assert p.delta == pytest.approx(-12.5)
