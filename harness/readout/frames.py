"""Run directories as pandas DataFrames, for notebooks; the CSV report is written from the same frame.

    from harness.readout import load_runs
    res = load_runs(["runs/A", "runs/B"], baseline="runs/A")
    res.metrics   # one row per run x task x metric: value, ci_low, ci_high, scored, items, errors,
                  # run metadata (strategy, source, k, fraction, stage), label...; with a baseline
                  # also delta, its interval, p_value, test, paired, worse, better, significant
    res.items     # one row per run x task x item x metric: the per-item score, for paired work
    wide = res.items.pivot_table(index=["task", "metric", "item"], columns="label", values="score")

``metrics`` holds the numbers of ``harness report`` exactly (it is built from
the same report model, harness/readout/model.py), in reported units (accuracy
in %, MT-Bench 1-10). ``items.score`` is in the task's own score units (0/1 for
accuracies), so ``metrics.value == scale * mean(items.score)`` over the scored
items; an errored item has ``score`` NaN and its ``error`` text.

pandas is imported here only, so ``harness report`` in markdown never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.errors import UsageError
from harness.readout.compare import METADATA_KEYS, Run, load_run
from harness.readout.model import Report, build_report

if TYPE_CHECKING:
    import pandas as pd

ITEM_COLUMNS = ("run_dir", "run_id", "label", *METADATA_KEYS, "task", "task_version", "item", "metric",
                "score", "error")


@dataclass(frozen=True)
class Results:
    report: Report
    metrics: pd.DataFrame
    items: pd.DataFrame


def load_runs(paths: Sequence[str | Path], baseline: str | Path | None = None, alpha: float = 0.05) -> Results:
    """Load finished run directories (refused as ``harness report`` refuses them) into frames;
    ``alpha`` sets the interval level (0.05: 95% intervals) and the comparisons' significance."""
    if not 0 < alpha < 0.5:  # also refuses nan
        raise UsageError(f"alpha must be between 0 and 0.5 (e.g. 0.05), got {alpha}")
    base = load_run(Path(baseline)) if baseline is not None else None
    report = build_report([load_run(Path(p)) for p in paths], base, alpha)
    return Results(report=report, metrics=metrics_frame(report), items=items_frame(report.runs))


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per run x task x metric; columns as in report.csv, plus ``scale``, ``higher_is_better`` and
    every other plain metadata field of the runs (e.g. ``study``, ``n_stages``, a study's own axes).
    Numbers are float64 (NaN where a value is undefined, e.g. ``worse`` for continuous scores)."""
    return _report_frame(report, extra=True).infer_objects()


def _report_frame(report: Report, extra: bool) -> pd.DataFrame:
    """The report rows as an object frame (values exactly as recorded; inf/NaN become None)."""
    import pandas as pd

    more = _more_metadata(report.runs) if extra else {}
    records = [row.record() | ({"scale": row.scale, "higher_is_better": row.higher_is_better,
                                **more.get(row.run_dir, {})} if extra else {})
               for row in report.rows]
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    cleaned = [[_finite_or_none(rec.get(c)) for c in columns] for rec in records]
    return pd.DataFrame(cleaned, columns=columns, dtype=object)


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _more_metadata(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """run_dir -> its plain (str, number, bool) metadata fields beyond METADATA_KEYS, for every run."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.metadata)
            if k not in METADATA_KEYS and all(_plain(r.metadata.get(k)) for r in runs)]
    return {str(r.path): {k: r.metadata.get(k) for k in keys} for r in runs}


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def items_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run x task x item x metric with the item's score (NaN when it has none)."""
    import pandas as pd

    rows: list[tuple[Any, ...]] = []
    for run in runs:
        meta = tuple(run.metadata.get(k) for k in METADATA_KEYS)
        for task in run.tasks.values():
            for item, scores in task.scores.items():
                error = task.item_errors.get(item)
                for spec in task.specs:
                    rows.append((str(run.path), run.run_id, run.label, *meta, task.name, task.version, item,
                                 spec.name, scores.get(spec.key, math.nan), error))
    return pd.DataFrame.from_records(rows, columns=list(ITEM_COLUMNS))


def to_csv(report: Report) -> str:
    """report.csv, rendered from the report frame: empty cells for missing and non-finite values."""
    return _report_frame(report, extra=False).to_csv(index=False, lineterminator="\n")
