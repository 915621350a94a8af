"""`harness.readout.load_runs`: the report's numbers as pandas DataFrames, for notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from test_report_synth import MT_SPECS, binary_scores, make_run

from harness.cli import main
from harness.core.errors import UsageError
from harness.readout import load_runs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "reports" / "example" / "evals"
RUNS = [EXAMPLE / "smollm2-3shot"]
BASELINE = EXAMPLE / "smollm2-0shot"
NUMBERS = ("value", "ci_low", "ci_high", "scored", "items", "errors", "delta", "delta_ci_low", "delta_ci_high",
           "p_value", "paired", "worse", "better")


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def test_load_runs_gives_the_numbers_of_harness_report_on_the_committed_example(tmp_path, capsys):
    code = main(["report", *map(str, RUNS), "--baseline", str(BASELINE), "--format", "json", "--out",
                 str(tmp_path), "--no-plots"])
    capsys.readouterr()
    assert code == 0
    expected = json.loads((tmp_path / "report.json").read_text())["rows"]
    res = load_runs(RUNS, baseline=BASELINE)
    got = res.metrics.to_dict("records")
    assert len(got) == len(expected) == 4  # (baseline, 3-shot) x (strict, flexible)
    for want, row in zip(expected, got, strict=True):
        assert (row["label"], row["task"], row["metric"]) == (want["label"], want["task"], want["metric"])
        for key in NUMBERS:
            assert _same(want.get(key), row.get(key)), (key, want.get(key), row.get(key))
    # The committed report says 3.3 [0.6, 16.7] for the 3-shot strict accuracy.
    strict = res.metrics.query("label == 'smollm2-135m 3-shot' and metric == 'strict'").iloc[0]
    assert round(strict.value, 1) == 3.3 and strict.worse == 0 and strict.better == 1
    assert res.metrics["value"].dtype == "float64"


def test_items_frame_is_paired_by_item_id():
    res = load_runs([BASELINE, *RUNS])
    items = res.items
    assert len(items) == 2 * 30 * 2  # runs x items x metrics
    wide = items[items.metric == "strict"].pivot_table(index="item", columns="label", values="score")
    base, new = wide["smollm2-135m 0-shot"], wide["smollm2-135m 3-shot"]
    assert int(((base == 1) & (new == 0)).sum()) == 0 and int(((base == 0) & (new == 1)).sum()) == 1
    means = items.groupby(["label", "metric"])["score"].mean() * 100
    for row in res.metrics.itertuples():
        assert means[(row.label, row.metric)] == pytest.approx(row.value)


def test_errored_items_keep_their_error_and_no_score(tmp_path):
    scores = binary_scores([1, 0, 1])
    scores["q003"] = None
    mt = {"m0": {"score": 6.0}, "m1": {"score": 8.0}}
    run = make_run(tmp_path, "a", {"gsm8k": {"scores": scores},
                                   "mt_bench": {"scores": mt, "specs": MT_SPECS}},
                   metadata={"strategy": "dmt", "k": 0.25, "stage": 1, "study": "s1", "lr": 2e-5,
                             "axes": {"x": ["k", "lr"], "series": ["strategy"]}})
    res = load_runs([run])
    errored = res.items[res.items.item == "q003"]
    assert errored["score"].isna().all() and set(errored["error"]) == {"generation failed"}
    row = res.metrics.set_index(["task", "metric"]).loc[("gsm8k", "strict")]
    assert [row[c] for c in ("items", "scored", "errors", "strategy", "k", "stage")] == [4, 3, 1, "dmt", 0.25, 1]
    assert res.metrics.set_index(["task", "metric"]).loc[("mt_bench", "score"), "value"] == pytest.approx(7.0)
    assert set(res.metrics["study"]) == {"s1"} and set(res.metrics["lr"]) == {2e-5}  # other plain metadata
    assert "axes" not in res.metrics  # not a plain value
    assert isinstance(res.metrics, pd.DataFrame) and "delta" not in res.metrics  # no baseline, no deltas


def test_bad_alpha_is_refused():
    with pytest.raises(UsageError, match="alpha must be between 0 and 0.5"):
        load_runs(RUNS, alpha=0.7)


def test_report_csv_from_the_frame_keeps_every_value_as_recorded(tmp_path):
    """pandas must not reformat numbers (30 -> 30.0, repr digits) or write nan/inf: the CSV is the rows."""
    import csv
    import io

    from harness.readout.compare import load_run
    from harness.readout.frames import to_csv
    from harness.readout.model import build_report

    mt = {"m0": {"score": 6.0}, "m1": {"score": 8.0}, "m2": None}
    a = make_run(tmp_path, "a", {"gsm8k": {"scores": binary_scores([1, 0, 1, 1])},
                                 "mt_bench": {"scores": mt, "specs": MT_SPECS}}, metadata={"k": 0.25})
    b = make_run(tmp_path, "b", {"gsm8k": {"scores": binary_scores([0, 0, 1, 1])},
                                 "mt_bench": {"scores": {**mt, "m1": {"score": 7.0}}, "specs": MT_SPECS}})
    report = build_report([load_run(b)], load_run(a), 0.05)
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == len(report.rows)
    for row, rec in zip(rows, (r.record() for r in report.rows), strict=True):
        for key, value in rec.items():
            finite = not (isinstance(value, float) and not math.isfinite(value))
            assert row[key] == (str(value) if value is not None and finite else ""), (key, value, row[key])
