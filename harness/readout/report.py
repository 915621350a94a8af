"""The standardized comparison report over run directories (reads files only).

One row per run (label, model, checkpoint fingerprint, strategy/k/fraction/
stage when the run carries them), one column per task metric (primary first)
as ``value [95% CI]``, and per task the item count, errors and coverage
counts the task reported (judged/total, timeouts, sandbox violations...).
With ``--baseline``, each cell also shows ``new - baseline`` on the items
both runs scored and its paired p-value (exact McNemar for 0/1 scores, paired
bootstrap otherwise; see harness/readout/compare.py), plus a long comparison table.

Markdown is the primary output (PR comments, papers); CSV and JSON carry the
same rows for machines; HTML adds plots (harness/readout/html_report.py,
harness/readout/plots.py).

    harness report runs/A runs/B --baseline runs/A --format md,html,csv,json --out reports/ab
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from harness.readout.compare import (
    METADATA_KEYS,
    Run,
    TaskRun,
    check_comparable,
    check_format,
    compare,
    estimate,
    load_run,
)

log = logging.getLogger("harness")
FORMATS = ("md", "csv", "html", "json")
_SKIP_EXTRAS = ("n", "scored", "errors")


@dataclass(frozen=True)
class Report:
    runs: list[Run]
    baseline: Run | None
    alpha: float
    rows: list[dict[str, Any]]  # one per (run, task, metric): the CSV/JSON records
    plots: tuple[str, ...] = ()  # PNG file names next to the report


# -- public API ----------------------------------------------------------------------------------

def check_run_format(run_dir: Path) -> None:
    """UsageError if config.json (and summary.json, once written) is missing, corrupt or another format."""
    check_format(Path(run_dir))


def write_run_report(run_dir: Path) -> str:
    """Write ``run_dir/report.md`` (the standard table for this one run) and return the markdown."""
    run_dir = Path(run_dir)
    report = build_report([load_run(run_dir)], None, 0.05)
    text = to_markdown(report)
    (run_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def write_report(run_dirs: list[Path], out: Path, baseline: Path | None = None, formats: tuple[str, ...] = ("md",),
                 plots: bool = True, alpha: float = 0.05) -> str:
    """Write the report over ``run_dirs`` into ``out`` in each format; return the markdown."""
    formats = _check_formats(formats)
    _check_alpha(alpha)
    report = build_report([load_run(Path(d)) for d in run_dirs], load_run(Path(baseline)) if baseline else None,
                          alpha)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {str(out)!r} cannot be created ({exc.strerror}); choose another directory") from None
    if plots:
        from harness.readout.plots import write_plots
        report = Report(report.runs, report.baseline, alpha, report.rows, tuple(write_plots(report, out)))
    text = to_markdown(report)
    writers = {"md": lambda: text, "csv": lambda: to_csv(report), "json": lambda: to_json(report),
               "html": lambda: _html(report, out)}
    for fmt in formats:
        (out / f"report.{fmt}").write_text(writers[fmt](), encoding="utf-8")
    log.info("report: %d runs -> %s (%s)", len(report.runs), out, ", ".join(f"report.{f}" for f in formats))
    return text


def main_report(args: argparse.Namespace) -> int:
    formats = _check_formats(tuple(f.strip() for f in args.format.split(",") if f.strip()))
    baseline = Path(args.baseline) if args.baseline else None
    if args.out is None:
        if formats != ("md",):
            raise UsageError(f"--format {args.format} writes files: add --out DIR")
        _check_alpha(args.alpha)
        report = build_report([load_run(Path(d)) for d in args.runs], load_run(baseline) if baseline else None,
                              args.alpha)
        print(to_markdown(report))
        return 0
    print(write_report([Path(d) for d in args.runs], Path(args.out), baseline, formats,
                       plots=not args.no_plots, alpha=args.alpha))
    return 0


def _html(report: Report, out: Path) -> str:
    from harness.readout.html_report import to_html
    return to_html(report, out)


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"unknown report format {', '.join(bad) or '(none)'}; choose from: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise UsageError(f"--alpha must be between 0 and 0.5 (e.g. 0.05), got {alpha}")


# -- the table model -----------------------------------------------------------------------------

def build_report(runs: list[Run], baseline: Run | None, alpha: float) -> Report:
    if baseline is not None and not any(_same(r, baseline) for r in runs):
        runs = [baseline, *runs]
    check_comparable(runs)
    rows = [row for run in runs for row in _rows(run, baseline, alpha)]
    return Report(runs=runs, baseline=baseline, alpha=alpha, rows=rows)


def _same(a: Run, b: Run) -> bool:
    return a.path.resolve() == b.path.resolve()


def _rows(run: Run, baseline: Run | None, alpha: float) -> list[dict[str, Any]]:
    rows = []
    for task in run.tasks.values():
        base_task = baseline.tasks.get(task.name) if baseline is not None and not _same(baseline, run) else None
        for spec in task.specs:
            est = estimate(task, spec, alpha)
            row = {"run_dir": str(run.path), "run_id": run.run_id, "label": run.label, "model": run.model, "checkpoint": run.checkpoint,
                   **{k: run.metadata.get(k) for k in METADATA_KEYS}, "task": task.name,
                   "task_version": task.version, "metric": spec.name, "primary": spec.primary, "kind": spec.kind,
                   "interval": est.method, "value": est.value, "ci_low": est.low, "ci_high": est.high,
                   "scored": est.n, "items": task.n, "errors": task.errors}
            if base_task is not None:
                p = compare(task, base_task, spec, alpha)
                row |= {"baseline": baseline.label, "delta": p.delta, "delta_ci_low": p.low,
                        "delta_ci_high": p.high, "p_value": p.p, "test": p.test, "paired": p.n,
                        "worse": p.worse, "better": p.better, "significant": bool(p.p < alpha)}
            rows.append(row)
    return rows


def metric_columns(report: Report) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order: tasks as the runs list them, primary metric first."""
    cols: dict[tuple[str, str], None] = {}
    for row in report.rows:
        cols[(row["task"], row["metric"])] = None
    return list(cols)


def task_names(report: Report) -> list[str]:
    return list(dict.fromkeys(task for task, _ in metric_columns(report)))


def metadata_columns(report: Report) -> list[str]:
    return [k for k in METADATA_KEYS if any(r.metadata.get(k) is not None for r in report.runs)]


def find_row(report: Report, run: Run, task: str, metric: str) -> dict[str, Any] | None:
    return next((r for r in report.rows if r["run_dir"] == str(run.path) and r["task"] == task
                 and r["metric"] == metric), None)


def task_counts(task: TaskRun) -> str:
    """Items, errors and the count-like metrics a task reported (coverage, timeouts, violations...)."""
    parts = [f"{task.n} items", f"{task.errors} errors"]
    m = task.metrics
    shown = set(_SKIP_EXTRAS) | {s.name for s in task.specs} | {s.key for s in task.specs}
    if m.get("judge_comparable_to_gpt4") == 0:
        parts.append("judge is not GPT-4: not comparable to published MT-Bench")
    shown.add("judge_comparable_to_gpt4")
    for name, value in m.items():
        if name in shown or name.endswith("_stderr") or "/" in name or not _number(value):
            continue
        stem = name.removesuffix("_judged")
        if name.endswith("_judged") and _number(m.get(f"{stem}_total")):
            parts.append(f"{stem} judged {_count(value)}/{_count(m[f'{stem}_total'])}")
            shown |= {f"{stem}_total", f"{stem}_coverage"}
        elif float(value).is_integer() or "coverage" in name:
            parts.append(f"{name} {_count(value)}")
    return " · ".join(parts)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


# -- formatting ----------------------------------------------------------------------------------

def fmt_value(v: float | None, scale_hint: float) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    text = f"{v:.1f}" if scale_hint >= 10 else f"{v:.2f}"
    return text.removeprefix("-") if float(text) == 0 else text  # no "-0.0"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def _scale(report: Report, task: str, metric: str) -> float:
    for run in report.runs:
        t = run.tasks.get(task)
        for s in t.specs if t else ():
            if s.name == metric:
                return s.scale
    return 1.0


def cell(report: Report, row: dict[str, Any] | None, with_delta: bool = True) -> str:
    if row is None:
        return "–"
    s = _scale(report, row["task"], row["metric"])
    text = f"{fmt_value(row['value'], s)} [{fmt_value(row['ci_low'], s)}, {fmt_value(row['ci_high'], s)}]"
    if with_delta and "delta" in row:
        star = "*" if row["significant"] else ""
        text += f" Δ {_signed(row['delta'], s)}{star} ({fmt_p(row['p_value'])})"
    return text


def _signed(v: float, s: float) -> str:
    return "–" if not math.isfinite(v) else ("+" if v >= 0 else "−") + fmt_value(abs(v), s)


def run_cells(report: Report, run: Run) -> list[str]:
    out = [run.label + (" (baseline)" if report.baseline and _same(run, report.baseline) else ""),
           run.model, run.checkpoint or "–"]
    out += [_meta(run.metadata.get(k)) for k in metadata_columns(report)]
    for task, metric in metric_columns(report):
        out.append(cell(report, find_row(report, run, task, metric)))
    for task in task_names(report):
        out.append(task_counts(run.tasks[task]) if task in run.tasks else "–")
    return out


def header(report: Report) -> list[str]:
    return (["run", "model", "checkpoint", *metadata_columns(report)]
            + [f"{t} {m}" for t, m in metric_columns(report)] + [f"{t} items" for t in task_names(report)])


def _meta(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def comparison_rows(report: Report) -> list[list[str]]:
    out = []
    for row in report.rows:
        if "delta" not in row:
            continue
        s = _scale(report, row["task"], row["metric"])
        disc = f"{row['worse']} / {row['better']}" if row["worse"] is not None else "–"
        base = find_row(report, report.baseline, row["task"], row["metric"]) if report.baseline else None
        out.append([row["label"], f"{row['task']} {row['metric']}", fmt_value(base["value"] if base else None, s),
                    fmt_value(row["value"], s), _signed(row["delta"], s),
                    f"[{_signed(row['delta_ci_low'], s)}, {_signed(row['delta_ci_high'], s)}]",
                    row["test"], fmt_p(row["p_value"]), str(row["paired"]), disc,
                    "yes" if row["significant"] else "no"])
    return out


def to_markdown(report: Report) -> str:
    level = round(100 * (1 - report.alpha))
    parts = ["# Evaluation report", "",
             _md_table(header(report), [run_cells(report, r) for r in report.runs]), "", legend(report)]
    comp = comparison_rows(report)
    if comp:
        parts += ["", f"## Compared with baseline `{report.baseline.label}`", "",
                  _md_table(["run", "metric", "baseline", "run", "Δ", f"{level}% CI of Δ", "test", "p", "paired",
                             "worse / better", "significant"], comp)]
    if report.plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report.plots]
    return "\n".join(parts) + "\n"


def legend(report: Report) -> str:
    level = round(100 * (1 - report.alpha))
    text = (f"Cells: value [{level}% CI] in reported units (accuracy in %, MT-Bench 1-10); Wilson interval for "
            "per-item 0/1 scores, normal interval otherwise. Items: count, errors (not scored, never counted as "
            "a score) and the task's own coverage counts.")
    if report.baseline is not None:
        text += (f" Δ = run − baseline `{report.baseline.label}` on items both runs scored, matched by id; "
                 f"p: exact McNemar test (0/1 scores) or paired bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples, "
                 f"seed {BOOTSTRAP_SEED}; continuous scores), two-sided; * p < {report.alpha}. "
                 "Worse / better: items right in the baseline and wrong in the run, and the reverse.")
    return text


def to_csv(report: Report) -> str:
    keys = list(dict.fromkeys(k for row in report.rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in keys})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    return "" if v is None else v


def to_json(report: Report) -> str:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {"alpha": report.alpha, "baseline": report.baseline.run_id if report.baseline else None,
           "runs": [{"run_id": r.run_id, "label": r.label, "model": r.model, "checkpoint": r.checkpoint,
                     "path": str(r.path), "metadata": r.metadata,
                     "tasks": {t.name: {"version": t.version, "n": t.n, "errors": t.errors,
                                        "item_ids_sha256": t.item_ids_sha256,
                                        "metrics": {k: clean(v) for k, v in t.metrics.items()}}
                               for t in r.tasks.values()}} for r in report.runs],
           "rows": [{k: clean(v) for k, v in row.items()} for row in report.rows],
           "plots": list(report.plots)}
    return json.dumps(doc, indent=2, default=str) + "\n"
