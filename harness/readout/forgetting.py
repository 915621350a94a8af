"""Forgetting curves: each ability's held-out NLL after every stage of every strategy, with paired intervals.

A study with ``every_stage = true`` evaluates every stage checkpoint of every
grid point; with its held-out probes (``holdout_<source>``, harness.train.holdout)
or the packaged probes (``probe_math``, ``probe_code``) each run holds, per
ability, the NLL per token of the same items. This module lines them up per
strategy, x = stage (0 = the base model, when the study evaluated it), and
compares each stage with the one before it and with the base model on the
same items (compare.compare: the paired cluster bootstrap, tokens as weights),
so "sequential training raised math NLL in its general stage" is a paired
interval, not two overlapping ones. It writes:

* ``forgetting.md`` rows (also appended to ``report.md``): strategy, ability,
  stage, the stage's data, NLL [CI], Δ vs the previous stage [CI] (p),
  Δ vs base [CI] (p); a negative Δ is an improvement (lower is better);
* ``forgetting.csv``: the same numbers, one row per (strategy, ability, stage);
* ``forgetting.png``: one panel per ability, x = stage, one line per strategy
  with its confidence band: the paired interval against the base model, which
  is what tells a stage's change from noise (the per-run intervals, in the
  tables, also hold the spread between items).

A run's series is its grid point: the label the study gives the final stage
(an earlier stage's label is that label plus ``-stage<i>``). Example::

    harness report studies/forgetting-cpu/runs/* --format md,html --out reports/forgetting-cpu
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from harness.readout.compare import Paired, Run, compare, estimate
from harness.readout.tables import fmt_p, md_code, md_table


@dataclass(frozen=True)
class CurvePoint:
    """One ability of one strategy after one stage (stage 0: the base model)."""

    series: str  # the grid point: "sequential", "dmt-k0.25"
    ability: str  # the task: "holdout_math"
    stage: int
    stage_name: str  # the stage's data, "math+code"; "base" for stage 0
    run_label: str
    value: float  # NLL per token (pooled over the items' tokens)
    low: float
    high: float
    items: int
    vs_previous: Paired | None  # this stage - the stage before it, on the same items
    vs_base: Paired | None  # this stage - the base model, on the same items


def abilities(runs: list[Run]) -> list[str]:
    """Tasks whose primary metric is an NLL (held-out probes first, then the packaged probes)."""
    names = dict.fromkeys(t.name for r in runs for t in r.tasks.values() if t.specs and t.specs[0].name == "nll")
    return sorted(names, key=lambda n: (not n.startswith("holdout_"), list(names).index(n)))


def series_of(run: Run) -> str | None:
    """The grid point a staged study run belongs to; None for runs outside a staged study."""
    m = run.metadata
    stage = m.get("stage")
    if not isinstance(stage, int) or stage < 1 or m.get("strategy") in (None, "base"):
        return None
    label = str(m.get("label") or run.label)
    return label if m.get("final", True) else label.removesuffix(f"-stage{stage}")


def _base(runs: list[Run]) -> Run | None:
    return next((r for r in runs if r.metadata.get("strategy") == "base" and r.metadata.get("stage") == 0), None)


def curves(runs: list[Run], alpha: float = 0.05) -> list[CurvePoint]:
    """Every (strategy, ability, stage) point, stages in order, base first when there is one."""
    base = _base(runs)
    by_series: dict[str, dict[int, Run]] = {}
    for r in runs:
        s = series_of(r)
        if s is not None:
            by_series.setdefault(s, {})[r.metadata["stage"]] = r
    if not by_series or not any(len(st) > 1 or base is not None for st in by_series.values()):
        return []
    out = []
    for series, stages in by_series.items():
        chain = ([(0, base)] if base is not None else []) + sorted(stages.items())
        for ability in abilities(runs):
            out += _points(series, ability, chain, base, alpha)
    return out


def _points(series: str, ability: str, chain: list[tuple[int, Run]], base: Run | None,
            alpha: float) -> list[CurvePoint]:
    points, prev = [], None
    for stage, run in chain:
        task = run.tasks.get(ability)
        if task is None:
            prev = None
            continue
        spec = task.specs[0]
        est = estimate(task, spec, alpha)
        base_task = base.tasks.get(ability) if base is not None and run is not base else None
        points.append(CurvePoint(
            series=series, ability=ability, stage=stage,
            stage_name="base" if run is base else str(run.metadata.get("stage_name") or f"stage {stage}"),
            run_label=run.label, value=est.value, low=est.low, high=est.high, items=est.n,
            vs_previous=compare(task, prev, spec, alpha) if prev is not None else None,
            vs_base=compare(task, base_task, spec, alpha) if base_task is not None else None))
        prev = task
    return points


# -- rendering ----------------------------------------------------------------------------------

def _num(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "n/a"


def _delta(p: Paired | None) -> str:
    if p is None:
        return ""
    if not math.isfinite(p.low):
        return f"{p.delta:+.3f} (n={p.n})"
    mark = " *" if p.significant else ""
    return f"{p.delta:+.3f} [{p.low:+.3f}, {p.high:+.3f}] {fmt_p(p.p)}{mark}"


def to_markdown(points: list[CurvePoint], alpha: float = 0.05) -> str:
    level = round(100 * (1 - alpha))
    head = ["strategy", "ability", "stage", "stage data", f"NLL/token [{level}% CI] ↓", "items",
            "Δ vs previous stage", "Δ vs base"]
    rows = [[md_code(p.series), md_code(p.ability), str(p.stage), md_code(p.stage_name),
             f"{_num(p.value)} [{_num(p.low)}, {_num(p.high)}]", str(p.items), _delta(p.vs_previous),
             _delta(p.vs_base)] for p in points]
    return ("## Forgetting curves\n\nEach ability's held-out NLL per token after every stage (stage 0: the base "
            "model). Δ is this stage minus the previous stage, and minus the base model, on the same items "
            f"(paired cluster bootstrap, {level}% interval; * p < {alpha:g}); lower is better, so a positive Δ "
            "is forgetting.\n\n" + md_table(head, rows) + "\n")


def to_csv(points: list[CurvePoint]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["strategy", "ability", "stage", "stage_name", "run_label", "nll", "ci_low", "ci_high", "items",
                "delta_prev", "delta_prev_low", "delta_prev_high", "p_prev", "delta_base", "delta_base_low",
                "delta_base_high", "p_base"])
    for p in points:
        cmp = [x for c in (p.vs_previous, p.vs_base) for x in ((c.delta, c.low, c.high, c.p) if c else ("",) * 4)]
        w.writerow([p.series, p.ability, p.stage, p.stage_name, p.run_label, p.value, p.low, p.high, p.items, *cmp])
    return buf.getvalue()


def plot(points: list[CurvePoint], path: Path) -> bool:
    """One panel per ability, x = stage, one line per strategy with its CI band; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p.ability for p in points))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, ability in zip(axes[0], names, strict=True):
        for series in dict.fromkeys(p.series for p in points):
            line = [p for p in points if p.ability == ability and p.series == series]
            xs = [p.stage for p in line]
            drawn = ax.plot(xs, [p.value for p in line], marker="o", label=series)
            # the paired interval vs base, drawn around the curve: the per-run intervals hold the spread
            # between items, which pairing removes, and would hide every change a stage makes
            lo, hi = zip(*(_paired_band(p) for p in line), strict=True)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=drawn[0].get_color())
        ax.set_title(f"{ability} (↓ lower is better)", fontsize=9)
        ax.set_xlabel("stage (0 = base)")
        ax.set_ylabel("held-out NLL / token\n(band: paired CI vs base)", fontsize=8)
        ax.set_xticks(sorted({p.stage for p in points if p.ability == ability}))
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _paired_band(p: CurvePoint) -> tuple[float, float]:
    """The curve's value shifted by the paired interval of its difference from base (zero width at base)."""
    c = p.vs_base
    if c is None or not (math.isfinite(c.low) and math.isfinite(c.high)):
        return p.value, p.value
    return p.value - c.delta + c.low, p.value - c.delta + c.high


def write_forgetting(runs: list[Run], out: Path, alpha: float = 0.05, plots: bool = True) -> tuple[str, list[str]]:
    """Write forgetting.md/.csv (and .png) into ``out`` when the runs hold staged probes; return
    (markdown section, plot file names); ("", []) when there is no curve to draw."""
    points = curves(runs, alpha)
    if not points:
        return "", []
    text = to_markdown(points, alpha)
    (out / "forgetting.md").write_text(text, encoding="utf-8")
    (out / "forgetting.csv").write_text(to_csv(points), encoding="utf-8")
    pngs = ["forgetting.png"] if plots and plot(points, out / "forgetting.png") else []
    return text, pngs

