"""The report's tables as text cells, shared by the markdown and HTML renderers.

Reads only the report model (harness/readout/model.py): the run table (one row
per run, one column per task metric as ``value [low, high]``, ``Δ`` against the
baseline), the comparison table and the legend. Escaping for a format is the
renderer's job (``md_table``, ``md_code`` here; ``html.escape`` in html_report).
"""

from __future__ import annotations

import math
import re
from typing import Any

from harness.core.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from harness.readout.compare import Run, TaskRun
from harness.readout.model import (
    MetricRow,
    Report,
    find_row,
    is_baseline,
    metadata_columns,
    metric_columns,
    scale_of,
    task_names,
)

_SKIP_EXTRAS = ("n", "scored", "errors")
COMPARISON_HEADER = ("run", "metric", "baseline", "run", "Δ", "{level}% CI of Δ", "test", "p", "exact McNemar p",
                     "paired", "worse / better", "MDE (80% power)", "significant")


def fmt_value(v: float | None, scale_hint: float) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    text = f"{v:.1f}" if scale_hint >= 10 else f"{v:.2f}"
    return text.removeprefix("-") if float(text) == 0 else text  # no "-0.0"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def signed(v: float, s: float) -> str:
    return "–" if not math.isfinite(v) else ("+" if v >= 0 else "−") + fmt_value(abs(v), s)


def cell(row: MetricRow | None, with_delta: bool = True) -> str:
    if row is None:
        return "–"
    s = row.scale
    text = f"{fmt_value(row.value, s)} [{fmt_value(row.ci_low, s)}, {fmt_value(row.ci_high, s)}]"
    if with_delta and row.vs is not None:
        star = "*" if row.vs.significant else ""
        text += f" Δ {signed(row.vs.delta, s)}{star} ({fmt_p(row.vs.p_value)})"
    return text


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


def _meta(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def header(report: Report) -> list[str]:
    return (["run", "model", "checkpoint", *metadata_columns(report)]
            + [f"{t} {m}" for t, m in metric_columns(report)] + [f"{t} items" for t in task_names(report)])


def run_cells(report: Report, run: Run) -> list[str]:
    out = [run.label + (" (baseline)" if is_baseline(report, run) else ""), run.model, run.checkpoint or "–"]
    out += [_meta(run.metadata.get(k)) for k in metadata_columns(report)]
    for task, metric in metric_columns(report):
        out.append(cell(find_row(report, run, task, metric)))
    for task in task_names(report):
        out.append(task_counts(run.tasks[task]) if task in run.tasks else "–")
    return out


def comparison_header(report: Report) -> list[str]:
    return [h.format(level=report.level) for h in COMPARISON_HEADER]


def comparison_rows(report: Report) -> list[list[str]]:
    out = []
    for row in report.rows:
        v = row.vs
        if v is None:
            continue
        s = scale_of(report, row.task, row.metric)
        disc = f"{v.worse} / {v.better}" if v.worse is not None else "–"
        base = find_row(report, report.baseline, row.task, row.metric) if report.baseline else None
        out.append([row.label, f"{row.task} {row.metric}", fmt_value(base.value if base else None, s),
                    fmt_value(row.value, s), signed(v.delta, s),
                    f"[{signed(v.delta_ci_low, s)}, {signed(v.delta_ci_high, s)}]",
                    v.test, fmt_p(v.p_value), fmt_p(v.p_exact) if v.p_exact is not None else "–",
                    f"{v.paired} {v.unit}s", disc, fmt_value(v.mde, s), "yes" if v.significant else "no"])
    return out


def legend(report: Report) -> str:
    text = (f"Cells: value [{report.level}% CI] in reported units (accuracy in %, MT-Bench 1-10); Wilson interval "
            "for per-item 0/1 scores, normal interval otherwise, clustered on the unit when a metric pools rows "
            "nested in units (MT-Bench turn ratings within questions). Items: count, errors (not scored, never counted "
            "as a score) and the task's own coverage counts.")
    if report.baseline is not None:
        text += (f" Δ = run − baseline {md_code(report.baseline.label)} on items both runs scored, matched by id. "
                 "The CI of Δ and p come from one test, so the CI excludes 0 exactly when p < alpha: for 0/1 "
                 "scores Tango's score test (asymptotic), with the exact McNemar p beside it; for other scores "
                 f"the paired bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}; the cluster "
                 f"bootstrap when rows nest in a unit), two-sided. Significant (*): p < {report.alpha} and, for "
                 "0/1 scores, the exact McNemar p < alpha too (both must reject, as in the gate). Paired: the "
                 "units both runs scored; a unit (item, question, problem) is what was sampled, and turns or "
                 "samples inside one are treated as correlated. MDE: the |Δ| this test detects with 80% power "
                 "at alpha, from the paired count and the observed discordance (0/1) or spread of the paired "
                 "differences. harness check gates one-sided at each task's allowed drop: 0/1 scores need "
                 "Tango's score test at the margin and the exact McNemar test of any drop to both reject, "
                 "continuous scores the paired bootstrap at the margin, with Holm over the gated metrics. "
                 "Worse / better: items right in the baseline and wrong in the run, and the reverse.")
    lower = sorted({f"{r.task} {r.metric}" for r in report.rows if not r.higher_is_better})
    if lower:
        text += (f" Lower is better for {', '.join(lower)} (a negative Δ is an improvement there; the gate's "
                 "drop is a rise).")
    return text


# -- markdown escaping ---------------------------------------------------------------------------

def one_line(text: str) -> str:
    """A line break would end a markdown table row or heading: it becomes a space."""
    return " ".join(text.splitlines())


def md_code(text: str) -> str:
    """``text`` as one markdown code span, fenced by more backticks than it contains (CommonMark)."""
    text = one_line(text)
    longest = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[one_line(c).replace("|", "\\|") for c in r] for r in [head, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])
