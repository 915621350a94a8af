"""The report as one self-contained HTML page: the same table as the markdown,
the baseline comparison, and the PNG plots embedded (also written next to it).

Significant changes against the baseline are tinted (green better, red worse,
by the metric's direction). No JavaScript, no network: the page opens from a
CI artifact or a file system as is.

Example: ``harness report runs/A runs/B --baseline runs/A --format html --out reports/ab``
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from harness.readout.compare import Run
from harness.readout.model import MetricRow, Report, find_row, metric_columns, task_names
from harness.readout.tables import comparison_header, comparison_rows, header, legend, run_cells

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.better { background: #e3f6e3; } td.worse { background: #fbe3e3; }
p.legend { max-width: 70em; font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def to_html(report: Report, out: Path) -> str:
    parts = ["<!doctype html>", "<html><head><meta charset='utf-8'><title>Evaluation report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>Evaluation report</h1>",
             _table(header(report), [_run_row(report, run) for run in report.runs]),
             f"<p class='legend'>{html.escape(legend(report))}</p>"]
    comp = comparison_rows(report)
    if comp:
        parts += [f"<h2>Compared with baseline <code>{html.escape(report.baseline.label)}</code></h2>",
                  _table(comparison_header(report), [[(c, "") for c in r] for r in comp])]
    from harness.readout.representations import html_parts
    parts += html_parts(report)  # the representation numbers, when runs carry vectors
    if report.plots:
        parts.append("<h2>Plots</h2>")
        parts += [_img(Path(out) / name) for name in report.plots]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _run_row(report: Report, run: Run) -> list[tuple[str, str]]:
    texts = run_cells(report, run)
    n_meta = len(texts) - len(metric_columns(report)) - len(task_names(report))
    classes = [""] * len(texts)
    for j, (task, metric) in enumerate(metric_columns(report)):
        classes[n_meta + j] = _tint(find_row(report, run, task, metric))
    return list(zip(texts, classes, strict=True))


def _tint(row: MetricRow | None) -> str:
    if row is None or row.vs is None or not row.vs.significant:
        return ""
    better = (row.vs.delta > 0) == row.higher_is_better
    return "better" if better else "worse"


def _table(head: list[str], rows: list[list[tuple[str, str]]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class='{c}'>{_lines(t)}</td>" if c else f"<td>{_lines(t)}</td>"
                                    for t, c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _lines(text: str) -> str:
    """The markdown cell, with the delta and each count on its own line."""
    return html.escape(text).replace(" Δ ", "<br>Δ ").replace(" · ", "<br>")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.name)
    return f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'><figcaption>{alt}</figcaption></figure>"
