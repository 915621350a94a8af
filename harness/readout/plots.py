"""PNG plots written next to a report (matplotlib, Agg backend; optional).

* ``bars.png``: per task, every metric as grouped bars across runs with
  their confidence-interval whiskers.
* ``composition-k.png`` / ``composition-fraction.png`` (one per x axis the runs declare in
  ``metadata["axes"]``, as ``harness study`` writes it; ``k`` or ``fraction`` for older runs): each ability (task's primary
  metric) against the parameter on a log axis, one line per strategy/source/stage,
  k = 0 drawn at a marked position left of the smallest non-zero value; runs
  without the parameter appear as dashed reference lines. The shape of Dong
  et al. (2023), "How Abilities in Large Language Models are Affected by
  Supervised Fine-tuning Data Composition", k-ablation figure.
* ``abilities.png``: a radar chart of the abilities per run, each axis
  relative to the best run on it (a bar summary when there are fewer than
  three axes); for a lower-is-better metric (a probe's NLL) the best run is
  the lowest and an axis reads lowest / value, so outward is better on every
  axis. Lower-is-better metrics are marked ``↓`` wherever they are named.

Example: ``harness report runs/* --format md,html --out reports/study``
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from harness.readout.compare import run_axes
from harness.readout.model import (
    MetricRow,
    Report,
    find_row,
    metric_columns,
    primary_metric,
    scale_of,
    task_names,
)

log = logging.getLogger("harness")
DPI = 110


def write_plots(report: Report, out: Path) -> list[str]:
    """Write the plots that apply to this report into ``out``; return their file names."""
    try:
        import matplotlib
    except ImportError:
        log.warning("plots skipped: matplotlib is not installed (pip install 'sft-harness[report]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    draws = [("bars.png", _bars)] + [(f"composition-{p}.png", _composer(p)) for p in composition_params(report)]
    for name, draw in [*draws, ("abilities.png", _abilities)]:
        fig = draw(report, plt)
        if fig is None:
            continue
        fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


def _series(report: Report, task: str, metric: str) -> list[tuple[Any, MetricRow | None]]:
    return [(run, find_row(report, run, task, metric)) for run in report.runs]


def _unit(report: Report, task: str) -> str:
    for run in report.runs:
        if task in run.tasks:
            primary = run.tasks[task].specs[0]
            unit = "%" if primary.scale >= 10 else "score"
            return unit if primary.higher_is_better else f"{unit}; ↓ lower is better"
    return ""


def _tick_label(report: Report, task: str, metric: str) -> str:
    """The metric's name, marked when lower is better (a probe's NLL), so a taller bar is not read as better."""
    lower = any(not r.higher_is_better for r in report.rows if r.task == task and r.metric == metric)
    return f"{metric} ↓" if lower else metric


def _yerr(rows: list[MetricRow | None]) -> list[list[float]]:
    lo = [max(0.0, r.value - r.ci_low) if r and math.isfinite(r.ci_low) else 0.0 for r in rows]
    hi = [max(0.0, r.ci_high - r.value) if r and math.isfinite(r.ci_high) else 0.0 for r in rows]
    return [lo, hi]


def _bars(report: Report, plt: Any) -> Any:
    tasks = task_names(report)
    # One axis per task: the metrics in its first metric's unit (a probe's nats beside a percentage would vanish).
    metrics = {t: [m for tt, m in metric_columns(report) if tt == t] for t in tasks}
    metrics = {t: [m for m in ms if scale_of(report, t, m) == scale_of(report, t, ms[0])] for t, ms in metrics.items()}
    n_runs = len(report.runs)
    width_in = min(18.0, 1.5 * len(tasks) + 0.3 * n_runs * sum(len(m) for m in metrics.values()) + 1)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.0, width_in), 4), squeeze=False,
                             gridspec_kw={"width_ratios": [len(metrics[t]) for t in tasks]})
    width = 0.8 / n_runs
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, run in enumerate(report.runs):
            rows = [find_row(report, run, task, m) for m in metrics[task]]
            vals = [r.value if r and math.isfinite(r.value) else 0.0 for r in rows]
            xs = [j + (i - (n_runs - 1) / 2) * width for j in range(len(rows))]
            ax.bar(xs, vals, width, yerr=_yerr(rows), capsize=3, label=run.label, color=f"C{i % 10}")
        ax.set_xticks(range(len(metrics[task])), [_tick_label(report, task, m) for m in metrics[task]])
        ax.set_title(task)
        ax.set_ylabel(_unit(report, task))
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(n_runs, 4), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"Metrics per run with {report.level}% confidence intervals")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((n_runs - 1) // 4), 1, 1))
    return fig


def _tick(v: float) -> str:
    """0.0625 -> "1/16" (the paper's k labels), 0.3 -> "0.3", 1 -> "1"."""
    if 0 < v < 1 and abs(1 / v - round(1 / v)) < 1e-6:
        return f"1/{round(1 / v)}"
    return f"{v:.3g}"




def composition_params(report: Report) -> list[str]:
    """The x axes some run declares and carries a number for: DMT's k, the data fraction of scaling runs."""
    declared = dict.fromkeys(p for r in report.runs for p in run_axes(r, "x"))
    return [p for p in declared if any(_x_value(r, p) is not None for r in report.runs)]


def _x_value(run: Any, param: str) -> float | None:
    return _num(run.metadata.get(param)) if param in run_axes(run, "x") else None


def series_key(run: Any, param: str) -> str:
    """The line a run belongs to in the plot against ``param``: its series fields, then its other x axes."""
    parts = [str(run.metadata[k]) for k in run_axes(run, "series") if run.metadata.get(k) is not None]
    parts += [f"{k}={_tick(v)}" for k in run_axes(run, "x") if k != param and (v := _x_value(run, k)) is not None]
    return " ".join(parts) or run.label


def _composer(param: str) -> Any:
    return lambda report, plt: _composition(report, plt, param)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _composition(report: Report, plt: Any, param: str) -> Any:
    values = [v for r in report.runs if (v := _x_value(r, param)) is not None]
    positive = [v for v in values if v > 0] or [1.0]
    zero_at = min(positive) / 4  # where k = 0 is drawn on the log axis
    tasks = task_names(report)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        _composition_panel(ax, report, task, param, zero_at)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Abilities against {param} (log axis; {param} = 0 at the marked position)")
    return fig


def _composition_panel(ax: Any, report: Report, task: str, param: str, zero_at: float) -> None:
    metric = primary_metric(report, task)
    groups: dict[str, list[tuple[float, MetricRow]]] = {}
    for i, (run, row) in enumerate(_series(report, task, metric)):
        if row is None or not math.isfinite(row.value):
            continue
        v = _x_value(run, param)
        if v is None and any(_x_value(run, p) is not None for p in run_axes(run, "x")):
            continue  # belongs to the other parameter's plot
        if v is None:  # a reference run (e.g. multi-task) without any composition parameter
            ax.axhline(row.value, ls="--", lw=1, color=f"C{(i + 5) % 10}", label=run.label)
            continue
        groups.setdefault(series_key(run, param), []).append((v if v > 0 else zero_at, row))
    for j, (name, pts) in enumerate(sorted(groups.items())):
        pts.sort(key=lambda p: p[0])
        rows = [p[1] for p in pts]
        ax.errorbar([p[0] for p in pts], [r.value for r in rows], yerr=_yerr(rows), marker="o", capsize=3,
                    label=name, color=f"C{j % 10}")
    ax.set_xscale("log")
    ax.axvline(zero_at, color="grey", lw=0.8, ls=":")
    ticks = sorted({p[0] for pts in groups.values() for p in pts})
    ax.set_xticks(ticks, ["0" if t == zero_at else _tick(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(param)
    ax.set_ylabel(f"{_tick_label(report, task, metric)} ({_unit(report, task)})")
    ax.set_title(task)
    ax.grid(alpha=0.3)


def _abilities(report: Report, plt: Any) -> Any:
    cols = metric_columns(report)
    primary = [(t, m) for t, m in cols if m == primary_metric(report, t)]
    axes_ = primary if len(primary) >= 3 else cols
    rel = {}
    for t, m in axes_:
        vals = {run.path: (row.value if row and math.isfinite(row.value) else 0.0)
                for run, row in _series(report, t, m)}
        if any(not r.higher_is_better for r in report.rows if r.task == t and r.metric == m):
            low = min((v for v in vals.values() if v > 0), default=0.0)  # lower is better: best = lowest
            rel[(t, m)] = {p: (low / v if v > 0 else 0.0) for p, v in vals.items()}
            continue
        best = max(vals.values(), default=0.0)
        rel[(t, m)] = {p: (v / best if best > 0 else 0.0) for p, v in vals.items()}
    labels = [f"{t} {_tick_label(report, t, m)}" for t, m in axes_]
    if len(axes_) < 3:
        return _summary_bars(report, plt, axes_, labels, rel)
    angles = [2 * math.pi * i / len(axes_) for i in range(len(axes_))]
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for i, run in enumerate(report.runs):
        r = [rel[a][run.path] for a in axes_]
        ax.plot(angles + angles[:1], r + r[:1], color=f"C{i % 10}", label=run.label)
        ax.fill(angles + angles[:1], r + r[:1], color=f"C{i % 10}", alpha=0.1)
    ax.set_xticks(angles, labels)
    ax.tick_params(axis="x", pad=12)
    ax.set_rlabel_position(180 / len(axes_))  # radial labels between the first two axes, off the axis labels
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.3, 1.1))
    ax.set_title("Abilities per run (1 = best run on each axis)")
    return fig


def _summary_bars(report: Report, plt: Any, axes_: list, labels: list[str], rel: dict) -> Any:
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(report.runs) * len(axes_)))
    height = 0.8 / len(report.runs)
    for i, run in enumerate(report.runs):
        ys = [j + i * height for j in range(len(axes_))]
        ax.barh(ys, [rel[a][run.path] for a in axes_], height, color=f"C{i % 10}", label=run.label)
    ax.set_yticks([j + (len(report.runs) - 1) * height / 2 for j in range(len(axes_))], labels)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("relative to the best run on each metric")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Abilities per run")
    return fig
