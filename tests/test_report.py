"""`harness report`: the table, deltas against a baseline, CSV/JSON outputs, refusals."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from test_report_synth import MT_SPECS, binary_scores, gsm8k, make_run

from harness.cli import main
from harness.core.errors import UsageError
from harness.core.records import MetricSpec
from harness.core.stats import wilson_interval
from harness.readout.compare import compare, estimate, load_run
from harness.readout.report import check_run_format, write_report, write_run_report

BASE = [1] * 60 + [0] * 140
DROP = [0] * 30 + [1] * 30 + [0] * 140


def report(capsys, *argv):
    code = main(["report", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_one_row_per_run_with_intervals(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE), metadata={"strategy": "dmt", "k": 0.25})
    b = make_run(tmp_path, "b", gsm8k(DROP), metadata={"strategy": "dmt", "k": 0})
    code, out, _ = report(capsys, a, b)
    assert code == 0
    lo, hi = wilson_interval(60, 200)
    assert f"| a | a | abababababab | dmt | 0.25 | 30.0 [{100 * lo:.1f}, {100 * hi:.1f}] |" in out
    assert "| run | model | checkpoint | strategy | k | gsm8k strict | gsm8k flexible | gsm8k items |" in out
    assert "Δ" not in out.split("Cells:")[0]  # no baseline, no deltas


def test_baseline_shows_deltas_and_paired_test(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    b = make_run(tmp_path, "b", gsm8k(DROP))
    code, out, _ = report(capsys, b, "--baseline", a)
    assert code == 0
    assert "| a (baseline) |" in out  # the baseline is added as the first row
    assert "Δ −15.0* (p<0.001)" in out
    assert ("| b | gsm8k strict | 30.0 | 15.0 | −15.0 | [−20.6, −10.7] | Tango score | p<0.001 | p<0.001 | 200 items "
            "| 30 / 0 | 7.6 | yes |") in out


def test_paired_numbers_by_hand(tmp_path):
    # 4 items: baseline 1,1,0,0 ; run 0,1,1,1 -> 1 worse, 2 better; delta +25 points
    a = load_run(make_run(tmp_path, "a", gsm8k([1, 1, 0, 0])))
    b = load_run(make_run(tmp_path, "b", gsm8k([0, 1, 1, 1])))
    spec = a.tasks["gsm8k"].specs[0]
    p = compare(b.tasks["gsm8k"], a.tasks["gsm8k"], spec)
    assert (p.worse, p.better, p.n, p.delta) == (1, 2, 4, 25.0)
    assert p.p_exact == 1.0  # binomial test of 1 vs 2 discordant pairs
    assert p.p == pytest.approx(math.erfc(1 / math.sqrt(3) / math.sqrt(2)))  # score test: z = (1 - 2) / sqrt(3)
    assert not p.significant
    assert p.low < 0 < 25 < p.high


def test_continuous_delta_is_the_mean_paired_difference(tmp_path):
    base = {"m1": {"score": 5.0}, "m2": {"score": 7.0}, "m3": {"score": 3.0}, "m4": None}
    new = {"m1": {"score": 6.0}, "m2": {"score": 7.5}, "m3": None, "m4": {"score": 9.0}}
    a = load_run(make_run(tmp_path, "a", {"mt_bench": {"scores": base, "specs": MT_SPECS}}))
    b = load_run(make_run(tmp_path, "b", {"mt_bench": {"scores": new, "specs": MT_SPECS}}))
    spec = MT_SPECS[0]
    p = compare(b.tasks["mt_bench"], a.tasks["mt_bench"], spec)
    assert p.test == "paired bootstrap" and p.n == 2  # only m1 and m2 were scored in both
    assert p.delta == pytest.approx(0.75)
    assert 0.5 <= p.low <= p.high <= 1.0  # resamples of {1.0, 0.5}
    est = estimate(b.tasks["mt_bench"], spec)
    assert est.n == 3 and est.value == pytest.approx((6 + 7.5 + 9) / 3) and est.method == "normal"


def test_binary_metric_with_fractional_items_falls_back_to_normal(tmp_path):
    spec = MetricSpec("pass@1", "pass@1", "binary", 100.0, primary=True)
    scores = {f"h{i}": {"pass@1": v} for i, v in enumerate([0.0, 0.2, 1.0, 0.6])}  # pass@1 from n=5 samples
    run = load_run(make_run(tmp_path, "a", {"humaneval": {"scores": scores, "specs": (spec,)}}))
    est = estimate(run.tasks["humaneval"], spec)
    assert est.method == "normal" and est.value == pytest.approx(45.0)


def test_errors_and_coverage_counts_are_shown(tmp_path, capsys):
    scores = binary_scores([1, 0, 1])
    scores["q003"] = None
    mt = {f"m{i}": {"score": 5.0 + i} for i in range(3)}
    a = make_run(tmp_path, "a", {
        "gsm8k": {"scores": scores},
        "humaneval": {"scores": {"h0": {"pass@1": 1.0}}, "extra": {"timeouts": 2, "sandbox_violations": 1},
                      "specs": (MetricSpec("pass@1", "pass@1", "binary", 100.0, True),)},
        "mt_bench": {"scores": mt, "specs": MT_SPECS,
                     "extra": {"turn1_judged": 77, "turn1_total": 80, "turn1_coverage": 0.9625,
                               "category/math": 3.0, "score_stderr": 0.1, "judge_comparable_to_gpt4": 0.0}}})
    code, out, _ = report(capsys, a)
    assert code == 0
    assert "4 items · 1 errors" in out
    assert "timeouts 2 · sandbox_violations 1" in out
    assert "turn1 judged 77/80" in out and "category/math" not in out and "stderr" not in out
    assert "judge is not GPT-4: not comparable to published MT-Bench" in out


def test_mismatched_item_sets_are_refused(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    b = make_run(tmp_path, "b", gsm8k(BASE[:100]))
    code, out, err = report(capsys, a, b)
    assert code == 2 and out == "" and "different item sets" in err and err.count("\n") == 1


def test_csv_and_json_outputs_parse(tmp_path):
    a = make_run(tmp_path, "a", gsm8k(BASE), metadata={"k": 1})
    b = make_run(tmp_path, "b", gsm8k(DROP), metadata={"k": 0})
    out = tmp_path / "rep"
    md = write_report([a, b], out, baseline=a, formats=("md", "csv", "json"), plots=False)
    assert (out / "report.md").read_text() == md
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert len(rows) == 4  # 2 runs x 2 metrics
    strict_b = next(r for r in rows if r["label"] == "b" and r["metric"] == "strict")
    assert float(strict_b["value"]) == 15.0 and float(strict_b["delta"]) == -15.0
    assert strict_b["significant"] == "True" and strict_b["test"] == "Tango score" and strict_b["k"] == "0"
    doc = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["a", "b"]
    row = next(r for r in doc["rows"] if r["label"] == "b" and r["metric"] == "strict")
    assert row["worse"] == 30 and row["better"] == 0 and math.isclose(row["p_exact"], 2 * 0.5**30)


def test_write_run_report_writes_report_md(tmp_path):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    text = write_run_report(a)
    assert (a / "report.md").read_text() == text and "| a | a |" in text


def test_check_run_format(tmp_path):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    check_run_format(a)  # fine
    (a / "summary.json").unlink()
    check_run_format(a)  # an unfinished run (resume) is fine: only config.json is required
    (a / "config.json").write_text(json.dumps({"format": 0, "harness_version": "0.0.9"}))
    with pytest.raises(UsageError, match="format 0; this harness reads format 1: rerun it or use sft-harness==0.0.9"):
        check_run_format(a)
    with pytest.raises(UsageError, match="does not exist"):
        check_run_format(tmp_path / "nope")


@pytest.mark.parametrize("argv,message", [(["--format", "pdf"], "unknown report format pdf"),
                                          (["--format", "md,csv"], "add --out DIR"),
                                          (["--alpha", "0.7"], "--alpha must be")])
def test_bad_report_flags_exit_2(tmp_path, capsys, argv, message):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    code, _, err = report(capsys, a, *argv)
    assert code == 2 and message in err


def test_missing_samples_file_is_refused(tmp_path, capsys):
    a = make_run(tmp_path, "a", gsm8k(BASE))
    (a / "gsm8k.samples.jsonl").unlink()
    code, _, err = report(capsys, a)
    assert code == 2 and "gsm8k.samples.jsonl is missing" in err
