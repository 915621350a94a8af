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

alpha applies per gated metric. Defaults: gsm8k=1.0, humaneval=2.0,
mt_bench=0.2 (other tasks 0). Exit codes: 0 pass, 1 regression, 2 bad input.

    harness check runs/new --baseline runs/base --max-drop gsm8k=1.0,mt_bench=0.2
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.records import MetricSpec
from harness.core.stats import (
    bootstrap_means,
    bootstrap_p_at_most,
    mcnemar_exact_one_sided,
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
    load_run,
    paired_values,
)

DEFAULT_MAX_DROP = {"gsm8k": 1.0, "humaneval": 2.0, "mt_bench": 0.2}


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


def main_check(args: argparse.Namespace) -> int:
    return gate_runs(Path(args.run), Path(args.baseline), args.max_drop, args.alpha)


def gate_runs(run_dir: Path, baseline: Path, max_drop: str | None, alpha: float) -> int:
    """Print the gate's verdicts; return 0 (pass) or 1 (regression). Bad input raises UsageError."""
    if not 0 < alpha < 0.5:
        raise UsageError(f"--alpha must be between 0 and 0.5 (e.g. 0.05), got {alpha}")
    run, base = load_run(run_dir), load_run(baseline)
    verdicts, notes = evaluate(run, base, max_drop, alpha)
    print(render(verdicts, notes, run, base, alpha))
    return 1 if any(v.regression for v in verdicts) else 0


def evaluate(run: Run, base: Run, max_drop: str | None, alpha: float) -> tuple[list[Verdict], list[str]]:
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
    return verdicts, notes


def parse_max_drop(text: str | None) -> dict[str, float]:
    """``"gsm8k=1.0,mt_bench.turn2=0.3"`` -> {name: allowed drop}; names are checked later."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            drop = float(value) if sep else math.nan
        except ValueError:
            drop = math.nan
        if not name.strip() or not math.isfinite(drop) or drop < 0:
            raise UsageError(f"--max-drop {part!r}: expected TASK=POINTS or TASK.METRIC=POINTS with points >= 0, "
                             "e.g. gsm8k=1.0,humaneval=2.0,mt_bench=0.2")
        out[name.strip()] = drop
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
        gated[(t, primary)] = explicit.get(t, explicit.get(f"{t}.{primary.name}", DEFAULT_MAX_DROP.get(t, 0.0)))
        for m, spec in specs[t].items():
            if f"{t}.{m}" in explicit:
                gated[(t, spec)] = explicit[f"{t}.{m}"]
    return gated


def judge(new: TaskRun, base: TaskRun, spec: MetricSpec, max_drop: float, alpha: float) -> Verdict:
    x, y = paired_values(new, base, spec)
    if not x:
        raise UsageError(f"{new.name} {spec.name}: no item was scored in both runs; nothing to compare "
                         "(check the runs' errors)")
    sign = 1.0 if spec.higher_is_better else -1.0
    common = dict(task=new.name, metric=spec.name, scale=spec.scale, baseline=estimate(base, spec).value,
                  value=estimate(new, spec).value, max_drop=max_drop, paired=len(x))
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
                   regression=p_margin < alpha and p_any < alpha)


def _judge_bootstrap(x: list[float], y: list[float], sign: float, scale: float, max_drop: float, alpha: float,
                     common: dict) -> Verdict:
    diffs = [sign * (a - b) * scale for a, b in zip(x, y, strict=True)]
    boot = sorted(bootstrap_means(diffs)) if len(diffs) >= 2 else []  # one item: no evidence (p = 1)
    p_margin = bootstrap_p_at_most(boot, max_drop)
    return Verdict(**common, drop=sum(diffs) / len(diffs),
                   ci=(percentile(boot, alpha / 2), percentile(boot, 1 - alpha / 2)), bound=percentile(boot, alpha),
                   p_margin=p_margin, p_any=bootstrap_p_at_most(boot, 0.0), test="paired bootstrap",
                   worse=None, better=None, regression=p_margin < alpha)


def _f(v: float, scale: float) -> str:
    text = f"{v:.1f}" if scale >= 10 else f"{v:.2f}"
    return text.removeprefix("-") if float(text) == 0 else text  # no "-0.0"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def describe(v: Verdict, alpha: float) -> str:
    unit = "points" if v.scale >= 10 else "rating points"
    level = round(100 * (1 - alpha))
    what = (f"{v.task} {v.metric}: {_f(v.baseline, v.scale)} -> {_f(v.value, v.scale)} on {v.paired} paired items"
            + (f" ({v.worse} worse, {v.better} better)" if v.worse is not None else ""))
    stats = (f"drop {_f(v.drop, v.scale)} {unit}, {level}% CI [{_f(v.ci[0], v.scale)}, {_f(v.ci[1], v.scale)}], "
             f"one-sided {level}% lower bound {_f(v.bound, v.scale)}; {_p(v.p_margin)} for drop > "
             f"{_f(v.max_drop, v.scale)}, {_p(v.p_any)} for any drop ({v.test})")
    if v.regression:
        return f"REGRESSION {what}: dropped more than the allowed {_f(v.max_drop, v.scale)} {unit}; {stats}"
    allowed = f"{_f(v.max_drop, v.scale)} {unit}"
    if v.drop <= 0:
        return f"ok {what}: no drop; {stats}"
    if v.drop <= v.max_drop:
        return f"ok {what}: drop within the allowed {allowed}, not significant at alpha {alpha}; {stats}"
    return (f"ok {what}: drop above the allowed {allowed} but not significant at alpha {alpha} (within item "
            f"noise); {stats}")


def render(verdicts: list[Verdict], notes: list[str], run: Run, base: Run, alpha: float) -> str:
    lines = [f"harness check: {run.label} ({run.path}) against baseline {base.label} ({base.path})"]
    lines += [describe(v, alpha) for v in verdicts] + notes
    failed = [v for v in verdicts if v.regression]
    if failed:
        lines.append(f"FAIL: {len(failed)} of {len(verdicts)} gated metrics regressed beyond the allowed drop "
                     f"({', '.join(f'{v.task} {v.metric}' for v in failed)})")
    else:
        lines.append(f"PASS: no significant regression beyond the allowed drops ({len(verdicts)} gated "
                     f"metric{'s' if len(verdicts) != 1 else ''}, alpha {alpha} each)")
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
