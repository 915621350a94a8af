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
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.readout.compare import check_format, load_run
from harness.readout.frames import to_csv
from harness.readout.model import Report, build_report
from harness.readout.tables import (
    comparison_header,
    comparison_rows,
    header,
    legend,
    md_code,
    md_table,
    run_cells,
)

log = logging.getLogger("harness")
FORMATS = ("md", "csv", "html", "json")


# -- public API ----------------------------------------------------------------------------------

def check_run_format(run_dir: Path) -> None:
    """UsageError if config.json (and summary.json, once written) is missing, corrupt or another format."""
    check_format(Path(run_dir))


def write_run_report(run_dir: Path) -> str:
    """Write ``run_dir/report.md`` (the standard table for this one run) and return the markdown."""
    run_dir = Path(run_dir)
    report = build_report([load_run(run_dir)], None, 0.05)
    report = replace(report, plots=tuple(_representation_maps(report, run_dir)))
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
        report = replace(report, plots=tuple(write_plots(report, out)))
        report = replace(report, plots=(*report.plots, *_representation_maps(report, out)))
    from harness.readout.forgetting import write_forgetting  # staged study runs with probes: the curves
    curve, curve_plots = write_forgetting(list(report.runs), out, alpha, plots)
    report = replace(report, plots=(*report.plots, *curve_plots))
    text = to_markdown(report) + (f"\n{curve}" if curve else "")
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


def _representation_maps(report: Report, out: Path) -> list[str]:
    from harness.readout.representations import write_maps
    return write_maps(report, out)


def _representation_lines(report: Report) -> list[str]:
    from harness.readout.representations import markdown_lines
    return markdown_lines(report)


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


# -- formatting ----------------------------------------------------------------------------------

def to_markdown(report: Report) -> str:
    parts = ["# Evaluation report", "",
             md_table(header(report), [run_cells(report, r) for r in report.runs]), "", legend(report)]
    comp = comparison_rows(report)
    if comp:
        parts += ["", f"## Compared with baseline {md_code(report.baseline.label)}", "",
                  md_table(comparison_header(report), comp)]
    parts += _representation_lines(report)
    if report.plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report.plots]
    return "\n".join(parts) + "\n"


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
           "rows": [{k: clean(v) for k, v in row.record().items()} for row in report.rows],
           "plots": list(report.plots)}
    return json.dumps(doc, indent=2, default=str) + "\n"
