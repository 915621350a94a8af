"""CI regression gate: did a run drop, beyond an allowed margin, significantly?

For each gated metric (every shared task's primary metric, plus any metric
named in ``--max-drop``) the drop is ``baseline - run`` in reported units
(accuracy points, MT-Bench rating points; sign flipped for lower-is-better
metrics), measured on the items both runs scored, matched by id. The gate
tests, one-sided at level alpha,

    H0: drop <= max_drop    against    H1: drop > max_drop

and fails (exit 1) when H0 is rejected: the run is then worse than the
baseline by more than the allowed drop, beyond what item noise explains.
Equivalently, the one-sided (1 - alpha) lower confidence bound of the drop
lies above ``max_drop``. A drop larger than ``max_drop`` that is not
significant passes, and says so.

* 0/1 scores (GSM8K, HumanEval greedy): Tango's score test for paired
  proportions at the margin (the standard non-inferiority test for paired
  binary data). The gate also requires the exact one-sided McNemar test of
  "any drop" to reject, so it never fails a run the exact test cannot tell
  from the baseline (this only makes the gate more conservative).
* Continuous scores (MT-Bench): paired bootstrap of the per-item differences
  (10,000 resamples, fixed seed); the p-value is the share of resampled mean
  drops at or below the margin, which inverts the percentile bound.

Several gated metrics are one family: Holm's step-down procedure keeps the
chance of any false alarm at alpha (the smallest p is tested at alpha / m, the
next at alpha / (m - 1), ...; each verdict shows its level). ``--no-holm``
tests every metric at alpha instead. For a 0/1 metric the p-value that Holm
orders is the larger of the margin and the exact any-drop p-values (both must
reject).

Power: each verdict states the smallest true drop the gate would catch with
80% power at its level (from the paired item count and the observed share of
discordant items, or the spread of the paired differences), and a warning
comes first when an allowed drop is below the smallest drop the items can
detect at all, so a pass is never read as evidence of no regression.

Defaults come from each task (``default_max_drop``: gsm8k 1.0, humaneval 2.0,
mt_bench 0.2; a task this install lacks, 0). Exit codes:
0 pass, 1 regression, 2 bad input.

    harness check runs/new --baseline runs/base --max-drop gsm8k=1.0,mt_bench=0.2
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.records import MetricSpec
from harness.core.stats import (
    bootstrap_means,
    bootstrap_p_at_most,
    bootstrap_weighted_diffs,
    holm,
    mcnemar_exact_one_sided,
    mde_paired_binary,
    mde_paired_mean,
    normal_cdf,
    percentile,
    tango_interval,
    tango_lower_bound,
    tango_z,
)
from harness.readout.compare import (
    Run,
    TaskRun,
    check_comparable,
    estimate,
    is_binary,
    is_pooled,
    load_run,
    paired_spread,
    paired_units,
)


def default_max_drop(task: str) -> float:
    """The allowed drop a task declares (``Task.default_max_drop``); 0 for a task this install lacks."""
    from harness import tasks

    return float(tasks.task_class(task).default_max_drop) if tasks.is_task(task) else 0.0


@dataclass(frozen=True)
class Verdict:
    task: str
    metric: str
    scale: float
    baseline: float
    value: float
    drop: float  # baseline - run, reported units; positive = worse
    max_drop: float
    ci: tuple[float, float]  # two-sided (1 - alpha) interval of the drop
    bound: float  # one-sided (1 - alpha) lower confidence bound of the drop
    p_margin: float  # one-sided, H0: drop <= max_drop
    p_any: float  # one-sided, H0: drop <= 0 (exact McNemar or bootstrap)
    test: str
    paired: int
    worse: int | None
    better: int | None
    regression: bool
    unit: str = "item"  # the sampled unit (MetricSpec.unit): what "paired" counts
    spread: float = math.nan  # share of discordant items (0/1 scores) or SD of the paired differences
    level: float = math.nan  # the alpha this metric was tested at (Holm-adjusted unless --no-holm)
    mde: float = math.nan  # true drop the gate fails with 80% power at ``level``, reported units
    mde_any: float = math.nan  # smallest drop distinguishable from none with 80% power at ``level``
    higher_is_better: bool = True  # False (a probe's NLL): the "drop" is a rise of the metric

    @property
    def p_gate(self) -> float:
        """The p-value the decision rests on: a 0/1 metric needs both tests to reject."""
        return max(self.p_margin, self.p_any) if self.worse is not None else self.p_margin


def main_check(args: argparse.Namespace) -> int:
    return gate_runs(Path(args.run), Path(args.baseline), args.max_drop, args.alpha,
                     holm_correction=not getattr(args, "no_holm", False))


def gate_runs(run_dir: Path, baseline: Path, max_drop: str | None, alpha: float, *,
              holm_correction: bool = True) -> int:
    """Print the gate's verdicts; return 0 (pass) or 1 (regression). Bad input raises UsageError."""
    check_alpha(alpha)
    run, base = load_run(run_dir), load_run(baseline)
    verdicts, notes = evaluate(run, base, max_drop, alpha, holm_correction=holm_correction)
    print(render(verdicts, notes, run, base, alpha, holm_correction=holm_correction))
    return 1 if any(v.regression for v in verdicts) else 0


def evaluate(run: Run, base: Run, max_drop: str | None, alpha: float, *,
             holm_correction: bool = True) -> tuple[list[Verdict], list[str]]:
    check_comparable([base, run])
    shared = [t for t in run.tasks if t in base.tasks]
    if not shared:
        raise UsageError(f"{run.path} and baseline {base.path} share no task ({', '.join(run.tasks)} vs "
                         f"{', '.join(base.tasks)}); evaluate both on the same suites")
    notes = [f"not gated: {t} is only in {where}" for where, r, o in (("the run", run, base),
                                                                    ("the baseline", base, run))
             for t in r.tasks if t not in o.tasks]
    verdicts = []
    for (task, spec), allowed in gated_metrics(run, shared, parse_max_drop(max_drop)).items():
        new_t, base_t = run.tasks[task], base.tasks[task]
        if new_t.errors > base_t.errors:
            notes.append(f"warning: {task} has {new_t.errors} errored items in the run vs {base_t.errors} in "
                         "the baseline; errored items are left out of the paired test")
        verdicts.append(judge(new_t, base_t, spec, allowed, alpha))
    verdicts = decide(verdicts, alpha, holm_correction)
    # A failed metric is evidence already; the warning is for passes that cannot be evidence of no drop.
    notes = [power_warning(v) for v in verdicts if not v.regression and 0 < v.max_drop < v.mde_any] + notes
    return verdicts, notes


def decide(verdicts: list[Verdict], alpha: float, holm_correction: bool = True) -> list[Verdict]:
    """Each verdict's level (Holm over the family, or alpha each), its regression flag and its power."""
    levels = holm([v.p_gate for v in verdicts], alpha) if holm_correction else [(alpha, False)] * len(verdicts)
    out = []
    for v, (level, rejected) in zip(verdicts, levels, strict=True):
        regression = rejected if holm_correction else v.p_gate < alpha
        out.append(replace(v, level=level, regression=regression, mde=detectable(v, level, v.max_drop),
                           mde_any=detectable(v, level, 0.0)))
    return out


def detectable(v: Verdict, level: float, margin: float) -> float:
    """The true drop (reported units) that a one-sided test at ``level`` of drop > margin catches with 80% power."""
    if v.worse is not None:
        return mde_paired_binary(v.paired, v.spread, level, margin=margin / v.scale) * v.scale
    return mde_paired_mean(v.spread, v.paired, level, margin=margin)


def power_warning(v: Verdict) -> str:
    unit = "points" if v.scale >= 10 else "rating points" if v.higher_is_better else "units"
    return (f"warning: {v.task} {v.metric}: {v.paired} paired {v.unit}s cannot detect a drop of "
            f"{_f(v.max_drop, v.scale)} {unit} (the allowed drop); the smallest drop they detect with 80% power "
            f"at alpha {_a(v.level)} is {_f(v.mde_any, v.scale)} {unit}, so a pass is not evidence that the drop "
            f"is under {_f(v.max_drop, v.scale)}: evaluate more items or allow a larger drop")


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:  # also refuses nan
        raise UsageError(f"--alpha must be between 0 and 0.5 (e.g. 0.05), got {alpha}")


MAX_ALLOWED_DROP = 100.0  # no metric is reported in units beyond 100 points


def parse_max_drop(text: str | None) -> dict[str, float]:
    """``"gsm8k=1.0,mt_bench.turn2=0.3"`` -> {name: allowed drop}; metric names are checked against the runs later."""
    out: dict[str, float] = {}
    if text is None:
        return out
    example = "e.g. gsm8k=1.0,humaneval=2.0,mt_bench=0.2"
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        try:
            drop = float(value) if sep else math.nan
        except ValueError:
            drop = math.nan
        if not name or not math.isfinite(drop) or drop < 0:
            raise UsageError(f"--max-drop {part!r}: expected TASK=POINTS or TASK.METRIC=POINTS with points >= 0, "
                             f"{example}")
        if drop > MAX_ALLOWED_DROP:
            raise UsageError(f"--max-drop {part!r}: an allowed drop is at most {MAX_ALLOWED_DROP:g} points; {example}")
        if name in out:
            raise UsageError(f"--max-drop gives {name} twice ({out[name]:g} and {drop:g}); give each metric once")
        out[name] = drop
    if not out:
        raise UsageError(f"--max-drop {text!r} names no metric; {example}")
    return out


def gated_metrics(run: Run, shared: list[str], explicit: dict[str, float]) -> dict[tuple[str, MetricSpec], float]:
    """(task, spec) -> allowed drop: each shared task's primary metric, plus metrics named explicitly."""
    specs = {t: {s.name: s for s in run.tasks[t].specs} for t in shared}
    valid = [t for t in shared] + [f"{t}.{m}" for t in shared for m in specs[t]]
    unknown = [name for name in explicit if name not in valid]
    if unknown:
        raise UsageError(f"--max-drop names unknown metric {', '.join(unknown)}; the runs share: {', '.join(valid)}")
    gated: dict[tuple[str, MetricSpec], float] = {}
    for t in shared:
        primary = run.tasks[t].specs[0]
        gated[(t, primary)] = explicit.get(t, explicit.get(f"{t}.{primary.name}", default_max_drop(t)))
        for m, spec in specs[t].items():
            if f"{t}.{m}" in explicit:
                gated[(t, spec)] = explicit[f"{t}.{m}"]
    return gated


def judge(new: TaskRun, base: TaskRun, spec: MetricSpec, max_drop: float, alpha: float) -> Verdict:
    x, wx, y, wy = paired_units(new, base, spec)
    if not x:
        raise UsageError(f"{new.name} {spec.name}: no item was scored in both runs; nothing to compare "
                         "(check the runs' errors)")
    sign = 1.0 if spec.higher_is_better else -1.0
    common = dict(task=new.name, metric=spec.name, scale=spec.scale, baseline=estimate(base, spec).value,
                  value=estimate(new, spec).value, max_drop=max_drop, paired=len(x), unit=spec.unit,
                  higher_is_better=spec.higher_is_better)
    if is_pooled(new, spec) or is_pooled(base, spec):
        return _judge_clustered((x, wx, y, wy), sign, spec.scale, max_drop, alpha, common)
    if spec.kind == "binary" and is_binary(x) and is_binary(y):
        return _judge_binary(x, y, sign, spec.scale, max_drop, alpha, common)
    return _judge_bootstrap(x, y, sign, spec.scale, max_drop, alpha, common)


def _judge_binary(x: list[float], y: list[float], sign: float, scale: float, max_drop: float, alpha: float,
                  common: dict) -> Verdict:
    n = len(x)
    worse = sum(1 for a, b in zip(x, y, strict=True) if sign * (a - b) > 0)
    better = sum(1 for a, b in zip(x, y, strict=True) if sign * (a - b) < 0)
    p_margin = 1 - normal_cdf(tango_z(worse, better, n, max_drop / scale))
    p_any = mcnemar_exact_one_sided(worse, better)
    lo, hi = tango_interval(worse, better, n, 1 - alpha)
    return Verdict(**common, drop=(worse - better) / n * scale, ci=(lo * scale, hi * scale),
                   bound=tango_lower_bound(worse, better, n, 1 - alpha) * scale, p_margin=p_margin, p_any=p_any,
                   test="Tango score test; exact McNemar", worse=worse, better=better,
                   regression=p_margin < alpha and p_any < alpha, spread=(worse + better) / n, level=alpha)


def _judge_bootstrap(x: list[float], y: list[float], sign: float, scale: float, max_drop: float, alpha: float,
                     common: dict) -> Verdict:
    diffs = [sign * (a - b) * scale for a, b in zip(x, y, strict=True)]
    boot = sorted(bootstrap_means(diffs)) if len(diffs) >= 2 else []  # one item: no evidence (p = 1)
    p_margin = bootstrap_p_at_most(boot, max_drop)
    return Verdict(**common, drop=sum(diffs) / len(diffs),
                   ci=(percentile(boot, alpha / 2), percentile(boot, 1 - alpha / 2)), bound=percentile(boot, alpha),
                   p_margin=p_margin, p_any=bootstrap_p_at_most(boot, 0.0), test="paired bootstrap",
                   worse=None, better=None, regression=p_margin < alpha,
                   spread=statistics.stdev(diffs) if len(diffs) >= 2 else math.nan, level=alpha)


def _judge_clustered(units: tuple[list[float], ...], sign: float, scale: float, max_drop: float, alpha: float,
                     common: dict) -> Verdict:
    """A pooled metric (rows nested in units): the paired cluster bootstrap of the pooled drop."""
    x, wx, y, wy = units
    pooled = sum(a * w for a, w in zip(x, wx, strict=True)) / sum(wx) - \
        sum(b * w for b, w in zip(y, wy, strict=True)) / sum(wy)
    boot = sorted(-sign * d * scale for d in bootstrap_weighted_diffs(x, wx, y, wy)) if len(x) >= 2 else []
    p_margin = bootstrap_p_at_most(boot, max_drop)
    return Verdict(**common, drop=sign * pooled * scale,
                   ci=(percentile(boot, alpha / 2), percentile(boot, 1 - alpha / 2)), bound=percentile(boot, alpha),
                   p_margin=p_margin, p_any=bootstrap_p_at_most(boot, 0.0), test="paired cluster bootstrap",
                   worse=None, better=None, regression=p_margin < alpha,
                   spread=paired_spread(x, wx, y, wy) * scale, level=alpha)


def _f(v: float, scale: float) -> str:
    text = f"{v:.1f}" if scale >= 10 else f"{v:.2f}"
    return text.removeprefix("-") if float(text) == 0 else text  # no "-0.0"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _a(level: float) -> str:
    return f"{level:.4g}"


def describe(v: Verdict, alpha: float) -> str:
    unit = "points" if v.scale >= 10 else "rating points" if v.higher_is_better else "units"
    level = round(100 * (1 - alpha))
    alpha = v.level if math.isfinite(v.level) else alpha
    what = (f"{v.task} {v.metric}: {_f(v.baseline, v.scale)} -> {_f(v.value, v.scale)} on {v.paired} paired "
            f"{v.unit}s"
            + (f" ({v.worse} worse, {v.better} better)" if v.worse is not None else "")
            + ("" if v.higher_is_better else " (lower is better: a drop here is a rise)"))
    stats = (f"drop {_f(v.drop, v.scale)} {unit}, {level}% CI [{_f(v.ci[0], v.scale)}, {_f(v.ci[1], v.scale)}], "
             f"one-sided {level}% lower bound {_f(v.bound, v.scale)}; {_p(v.p_margin)} for drop > "
             f"{_f(v.max_drop, v.scale)}, {_p(v.p_any)} for any drop ({v.test}); tested at alpha {_a(alpha)}, "
             f"80% power to fail a true drop of {_f(v.mde, v.scale)}")
    if v.regression:
        return f"REGRESSION {what}: dropped more than the allowed {_f(v.max_drop, v.scale)} {unit}; {stats}"
    allowed = f"{_f(v.max_drop, v.scale)} {unit}"
    if v.drop <= 0:
        return f"ok {what}: no drop; {stats}"
    if v.drop <= v.max_drop:
        return f"ok {what}: drop within the allowed {allowed}, not significant at alpha {_a(alpha)}; {stats}"
    return (f"ok {what}: drop above the allowed {allowed} but not significant at alpha {_a(alpha)} (within item "
            f"noise); {stats}")


def decision_rule(alpha: float, m: int, holm_correction: bool) -> str:
    """The gate's rule in one sentence (also printed in the report, docs/ci-gate.md)."""
    family = (f"Holm over the {m} gated metrics (family-wise error <= {_a(alpha)}; levels {_a(alpha / m)} to "
              f"{_a(alpha)})" if holm_correction and m > 1 else f"alpha {_a(alpha)} each")
    return ("rule: a metric fails when its drop exceeds the allowed drop significantly, one-sided: 0/1 scores need "
            "Tango's score test at the margin and the exact McNemar test of any drop to both reject; continuous "
            f"scores the paired bootstrap at the margin; {family}")


def render(verdicts: list[Verdict], notes: list[str], run: Run, base: Run, alpha: float, *,
           holm_correction: bool = True) -> str:
    lines = [f"harness check: {run.label} ({run.path}) against baseline {base.label} ({base.path})",
             decision_rule(alpha, len(verdicts), holm_correction)]
    warnings = [n for n in notes if n.startswith("warning:") and "cannot detect" in n]
    lines += warnings + [describe(v, alpha) for v in verdicts] + [n for n in notes if n not in warnings]
    failed = [v for v in verdicts if v.regression]
    family = (f"Holm-adjusted, family-wise alpha {_a(alpha)}" if holm_correction and len(verdicts) > 1
              else f"alpha {_a(alpha)} each")
    if failed:
        lines.append(f"FAIL: {len(failed)} of {len(verdicts)} gated metrics regressed beyond the allowed drop "
                     f"({', '.join(f'{v.task} {v.metric}' for v in failed)}; {family})")
    else:
        lines.append(f"PASS: no significant regression beyond the allowed drops ({len(verdicts)} gated "
                     f"metric{'s' if len(verdicts) != 1 else ''}, {family})")
    return "\n".join(lines)


def preflight(baseline: Path, planned: dict[str, tuple[str, list[str]]]) -> None:
    """Before any model loads: refuse a --baseline that evaluated a planned task on other items or another
    task version. ``planned`` maps task name -> (version, item ids), as the runner knows them after loading
    the data; tasks the baseline lacks are left to the gate (reported as not gated)."""
    from harness.core.records import sha256_json

    base = load_run(baseline)
    for name, (version, ids) in planned.items():
        task = base.tasks.get(name)
        if task is None:
            continue
        if task.version != version:
            raise UsageError(f"--baseline {baseline} ran {name} version {task.version}, this run would use "
                             f"version {version}; rerun the baseline with this harness to compare them")
        if task.item_ids_sha256 != sha256_json(sorted(ids)):
            raise UsageError(f"--baseline {baseline} evaluated {name} on {task.n} other items than the {len(ids)} "
                             "planned here; use the same --limit and data as the baseline")
