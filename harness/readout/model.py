"""The report model: frozen row records that every renderer reads.

One ``MetricRow`` per run x task x metric holds the estimate in reported units
and, when a baseline was given, its paired ``Comparison``. The markdown, CSV,
JSON and HTML renderers, the plots and ``load_runs`` (pandas frames for
notebooks) all read these records: plots and HTML need nothing from report.py
(which writes the files and calls them), so the readout imports in one
direction, and no renderer looks a number up by a string key.

Import order inside the readout: compare (loading, statistics) < model <
tables, plots, frames < html_report < report; the gate needs compare only.

``MetricRow.record()`` is the flat form written to CSV/JSON and turned into a
DataFrame row: its keys and their order are the report's file format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.core.records import MetricSpec
from harness.readout.compare import METADATA_KEYS, Run, TaskRun, check_comparable, compare, estimate, run_axes


@dataclass(frozen=True)
class Comparison:
    """``run - baseline`` on the items both runs scored (see compare.compare)."""

    baseline: str  # the baseline's label
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    p_value: float
    test: str
    paired: int
    worse: int | None
    better: int | None
    significant: bool  # as compare.Paired.significant: p < alpha, and the exact McNemar test too for 0/1 scores
    p_exact: float | None = None  # 0/1 scores: exact McNemar p-value (p_value is the score test's)
    mde: float = math.nan  # |delta| this test detects with 80% power at alpha, reported units
    unit: str = "item"  # the sampled unit the interval and test treat as independent


@dataclass(frozen=True)
class MetricRow:
    """One metric of one task in one run, in reported units (accuracy in %, MT-Bench 1-10)."""

    run_dir: str
    run_id: str
    label: str
    model: str
    checkpoint: str
    metadata: tuple[tuple[str, Any], ...]  # METADATA_KEYS in order, None where the run lacks one
    task: str
    task_version: str
    metric: str
    primary: bool
    kind: str
    interval: str  # "wilson" | "normal" | "none"
    value: float
    ci_low: float
    ci_high: float
    scored: int  # items that carry this score
    items: int  # items of the task, errored ones included
    errors: int
    scale: float  # reported units per score unit: 100 for accuracies, 1 for ratings
    higher_is_better: bool = True
    vs: Comparison | None = None

    def record(self) -> dict[str, Any]:
        """The flat CSV/JSON/DataFrame row; without a baseline the comparison keys are absent."""
        out = {"run_dir": self.run_dir, "run_id": self.run_id, "label": self.label, "model": self.model,
               "checkpoint": self.checkpoint, **dict(self.metadata), "task": self.task,
               "task_version": self.task_version, "metric": self.metric, "primary": self.primary,
               "kind": self.kind, "interval": self.interval, "value": self.value, "ci_low": self.ci_low,
               "ci_high": self.ci_high, "scored": self.scored, "items": self.items, "errors": self.errors}
        if self.vs is not None:
            v = self.vs
            out |= {"baseline": v.baseline, "delta": v.delta, "delta_ci_low": v.delta_ci_low,
                    "delta_ci_high": v.delta_ci_high, "p_value": v.p_value, "test": v.test, "paired": v.paired,
                    "worse": v.worse, "better": v.better, "p_exact": v.p_exact, "mde": v.mde, "unit": v.unit,
                    "significant": v.significant}
        return out


@dataclass(frozen=True)
class Report:
    """The rows of a report over ``runs`` (the baseline first when it was not among them)."""

    runs: tuple[Run, ...]
    baseline: Run | None
    alpha: float
    rows: tuple[MetricRow, ...]
    plots: tuple[str, ...] = ()  # PNG file names next to the report

    @property
    def level(self) -> int:
        """The interval level in percent: 95 for alpha 0.05."""
        return round(100 * (1 - self.alpha))


def build_report(runs: list[Run], baseline: Run | None, alpha: float) -> Report:
    """Every run's estimates, each compared with the baseline when one is given (refuses runs
    that evaluated a shared task on other items or another task version)."""
    if baseline is not None and not any(same_run(r, baseline) for r in runs):
        runs = [baseline, *runs]
    check_comparable(runs)
    rows = tuple(row for run in runs for row in _rows(run, baseline, alpha))
    return Report(runs=tuple(runs), baseline=baseline, alpha=alpha, rows=rows)


def _rows(run: Run, baseline: Run | None, alpha: float) -> list[MetricRow]:
    rows = []
    metadata = tuple((k, run.metadata.get(k)) for k in METADATA_KEYS)
    for task in run.tasks.values():
        base_task = baseline.tasks.get(task.name) if baseline is not None and not same_run(run, baseline) else None
        for spec in task.specs:
            est = estimate(task, spec, alpha)
            vs = _comparison(task, base_task, spec, baseline.label, alpha) if base_task is not None else None
            rows.append(MetricRow(
                run_dir=str(run.path), run_id=run.run_id, label=run.label, model=run.model,
                checkpoint=run.checkpoint, metadata=metadata, task=task.name, task_version=task.version,
                metric=spec.name, primary=spec.primary, kind=spec.kind, interval=est.method, value=est.value,
                ci_low=est.low, ci_high=est.high, scored=est.n, items=task.n, errors=task.errors,
                scale=spec.scale, higher_is_better=spec.higher_is_better, vs=vs))
    return rows


def _comparison(task: TaskRun, base_task: TaskRun, spec: MetricSpec, baseline_label: str, alpha: float) -> Comparison:
    p = compare(task, base_task, spec, alpha)
    return Comparison(baseline=baseline_label, delta=p.delta, delta_ci_low=p.low, delta_ci_high=p.high,
                      p_value=p.p, test=p.test, paired=p.n, worse=p.worse, better=p.better,
                      significant=p.significant, p_exact=p.p_exact, mde=p.mde, unit=p.unit)


def same_run(a: Run, b: Run | None) -> bool:
    return b is not None and a.path.resolve() == b.path.resolve()


def is_baseline(report: Report, run: Run) -> bool:
    return same_run(run, report.baseline)


def metric_columns(report: Report) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order: tasks as the runs list them, primary metric first."""
    return list(dict.fromkeys((row.task, row.metric) for row in report.rows))


def task_names(report: Report) -> list[str]:
    return list(dict.fromkeys(task for task, _ in metric_columns(report)))


def metadata_columns(report: Report) -> list[str]:
    """The metadata keys (strategy, k, ..., then any other axis a run declares) that at least one run carries."""
    declared = [k for r in report.runs for kind in ("series", "x") for k in run_axes(r, kind)]
    keys = dict.fromkeys([*METADATA_KEYS, *declared])
    return [k for k in keys if any(r.metadata.get(k) is not None for r in report.runs)]


def find_row(report: Report, run: Run, task: str, metric: str) -> MetricRow | None:
    path = str(run.path)
    return next((r for r in report.rows if r.run_dir == path and r.task == task and r.metric == metric), None)


def primary_metric(report: Report, task: str) -> str | None:
    """The task's first metric: rows list each task's primary metric first (compare.load_run sorts specs)."""
    return next((r.metric for r in report.rows if r.task == task), None)


def scale_of(report: Report, task: str, metric: str) -> float:
    return next((r.scale for r in report.rows if r.task == task and r.metric == metric), 1.0)


def finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
