"""Run directories on disk -> per-metric estimates and paired comparisons.

The report and the CI gate read only a run's files (see harness/run/runner.py):
``config.json`` (label, model, adapter fingerprint, metadata), ``summary.json``
(per task: version, n, errors, metrics, metric specs, item-set hash) and
``<task>.samples.jsonl`` (one row per item with its ``scores``). Each metric
is the mean of one per-item score (``MetricSpec.key``), so intervals and
paired tests are built from the samples alone; no model is ever run.

Two runs are compared only on the same items of the same task version: a
different item set or task version is refused (UsageError), never compared.

Example: ``harness report runs/A runs/B --baseline runs/A``
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness import RUN_FORMAT
from harness.core.errors import UsageError
from harness.core.files import read_jsonl_numbered
from harness.core.records import MetricSpec, sha256_json
from harness.core.stats import (
    Z95,
    bootstrap_means,
    bootstrap_p_two_sided,
    bootstrap_weighted_diffs,
    mcnemar_exact,
    mde_paired_binary,
    mde_paired_mean,
    mean_stderr,
    normal_interval,
    normal_ppf,
    percentile,
    tango_interval,
    tango_p_two_sided,
    weighted_mean_stderr,
    wilson_interval,
)

METADATA_KEYS = ("strategy", "source", "k", "fraction", "stage")
# A run written by `harness study` names its own axes: metadata["axes"] = {"x": [numbers along
# a plot's x axis, e.g. "k"], "series": [fields that split lines, e.g. "strategy", "stage"]}.
# Runs from before that get the fields the study always wrote.
LEGACY_AXES = {"x": ("k", "fraction"), "series": ("strategy", "source", "stage")}


def run_axes(run: Any, kind: str) -> tuple[str, ...]:
    """The metadata fields a run declares as ``kind`` ("x" or "series") axes."""
    axes = run.metadata.get("axes")
    if isinstance(axes, dict) and isinstance(axes.get(kind), list | tuple):
        return tuple(str(a) for a in axes[kind])
    return LEGACY_AXES[kind]


@dataclass(frozen=True)
class TaskRun:
    name: str
    version: str
    n: int
    errors: int
    metrics: dict[str, Any]
    specs: tuple[MetricSpec, ...]  # primary first
    item_ids_sha256: str
    scores: dict[str, dict[str, float]]  # item id -> {score key: value}; every item, {} when errored
    item_errors: dict[str, str] = field(default_factory=dict)  # item id -> its error, errored items only
    clusters: dict[str, str] = field(default_factory=dict)  # item id -> its sampled unit (info.cluster), if any


@dataclass(frozen=True)
class Run:
    path: Path
    run_id: str
    label: str
    model: str
    checkpoint: str  # short model fingerprint, "" when the adapter records none
    metadata: dict[str, Any]
    tasks: dict[str, TaskRun]


@dataclass(frozen=True)
class Estimate:
    """A metric of one run in reported units, with its interval."""

    value: float
    low: float
    high: float
    n: int  # items that carry this score
    method: str  # "wilson" | "normal" | "clustered" (pooled rows, SE clustered on the item)


@dataclass(frozen=True)
class Paired:
    """``new - baseline`` on the items both runs scored, in reported units."""

    delta: float
    low: float
    high: float
    p: float  # two-sided, H0: no difference, from the test whose interval [low, high] is shown
    test: str  # "Tango score" | "paired bootstrap" | "paired cluster bootstrap"
    n: int  # paired units (spec.unit)
    worse: int | None = None  # binary: items right in the baseline, wrong now
    better: int | None = None  # binary: wrong in the baseline, right now
    p_exact: float | None = None  # binary: the exact McNemar p-value, two-sided
    significant: bool = False  # p < alpha, and for 0/1 scores the exact McNemar test rejects too (as the gate)
    mde: float = math.nan  # |delta| detectable with 80% power by this two-sided test at alpha, reported units
    unit: str = "item"  # what was sampled: the unit the interval and the test treat as independent


# -- loading -------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path.parent} is not a finished run directory: no {path.name} ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is unreadable or corrupt ({exc}); rerun the run that wrote it") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path} is corrupt: expected a JSON object, found {type(obj).__name__}")
    return obj


def check_format(run_dir: Path) -> None:
    """Refuse what is not a run directory of this harness, or one written by another on-disk format
    (see harness.RUN_FORMAT), each with a message saying which."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise UsageError(f"{run_dir} is a file, not a run directory; pass the directory `harness run` wrote "
                         f"(e.g. {run_dir.parent})")
    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist; pass a directory written by `harness run`")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} is not a run directory (no config.json); pass a directory written by "
                         "`harness run`")
    docs = [_read_json(run_dir / "config.json", "written when a run starts")]
    if "format" not in docs[0]:
        raise UsageError(f"{run_dir} is not a run directory of this harness (its config.json has no format "
                         "field); pass a directory written by `harness run`")
    if (run_dir / "summary.json").exists():
        docs.append(_read_json(run_dir / "summary.json", "written when a run finishes"))
    for doc in docs:
        fmt = doc.get("format")
        if fmt != RUN_FORMAT:
            version = doc.get("harness_version", "the version that wrote it")
            raise UsageError(f"run directory {run_dir} was written by harness format {fmt}; this harness reads "
                             f"format {RUN_FORMAT}: rerun it or use sft-harness=={version}")


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    check_format(run_dir)
    config = _read_json(run_dir / "config.json", "written when a run starts")
    summary = _read_json(run_dir / "summary.json", "the run did not finish; rerun its `harness run` command "
                         "to resume it")
    tasks = {name: _load_task(run_dir, name, rec) for name, rec in (summary.get("tasks") or {}).items()}
    if not tasks:
        raise UsageError(f"{run_dir}/summary.json lists no tasks; rerun the run that wrote it")
    adapter = config.get("adapter") or {}
    model = config.get("model") or {}
    target = str(model.get("target") or model.get("spec") or "?")
    return Run(path=run_dir, run_id=str(summary.get("run_id") or run_dir.name),
               label=str(config.get("label") or summary.get("label") or run_dir.name),
               model=Path(target).name if "/" in target else target,
               checkpoint=str(adapter.get("fingerprint") or "")[:12],
               metadata=dict(config.get("metadata") or {}), tasks=tasks)


def _load_task(run_dir: Path, name: str, rec: dict[str, Any]) -> TaskRun:
    try:
        specs = [MetricSpec(**{f.name: s[f.name] for f in fields(MetricSpec) if f.name in s})
                 for s in rec["metric_specs"]]
        version, item_hash = str(rec["version"]), str(rec["item_ids_sha256"])
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{run_dir}/summary.json: task {name!r} lacks {exc} (metric_specs, version, "
                         "item_ids_sha256); rerun it with this harness") from None
    specs.sort(key=lambda s: not s.primary)  # stable: primary first, then the task's order
    path = run_dir / f"{name}.samples.jsonl"
    scores, item_errors, clusters = _read_samples(path)
    n = int(rec.get("n", len(scores)))
    _check_samples(path, scores, n, item_hash)
    return TaskRun(name=name, version=version, n=n, errors=int(rec.get("errors", 0)),
                   metrics=dict(rec.get("metrics") or {}), specs=tuple(specs), item_ids_sha256=item_hash,
                   scores=scores, item_errors=item_errors, clusters=clusters)


def _check_samples(path: Path, scores: dict[str, dict[str, float]], n: int, item_hash: str) -> None:
    """The samples must be the items summary.json counted: a cut or swapped file would be compared
    on other items than the table says."""
    if len(scores) != n:
        raise UsageError(f"{path} holds {len(scores)} items but summary.json lists {n}: the file was cut "
                         "or replaced; rerun the run that wrote it")
    if sha256_json(sorted(scores)) != item_hash:
        raise UsageError(f"{path}: item ids do not match summary.json (item_ids_sha256 {item_hash[:8]}); "
                         "the file was replaced; rerun the run that wrote it")


def _read_samples(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, str], dict[str, str]]:
    """Per-item scores (finite numbers only), the errors of errored items, and each item's cluster
    (``info.cluster``: the unit it was sampled with, e.g. its source passage) where the task set one."""
    if not path.exists():
        raise UsageError(f"{path} is missing: the report needs the per-item samples written by `harness run`")
    out: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    clusters: dict[str, str] = {}
    for lineno, row in read_jsonl_numbered(path, required=("id",)):
        item, scores = str(row["id"]), row.get("scores") or {}
        if not isinstance(scores, dict):
            raise UsageError(f"{path}:{lineno}: 'scores' is a JSON {type(scores).__name__}, expected an object; "
                             "rerun the run that wrote it")
        if item in out:
            raise UsageError(f"{path}:{lineno}: item {item!r} appears twice; rerun the run that wrote it")
        out[item] = {k: float(v) for k, v in scores.items()
                     if isinstance(v, (int, float)) and math.isfinite(v)}
        if row.get("error"):
            errors[item] = str(row["error"])
        info = row.get("info")
        if isinstance(info, dict) and info.get("cluster") is not None:
            clusters[item] = str(info["cluster"])
    return out, errors, clusters


def check_comparable(runs: list[Run]) -> None:
    """Refuse runs that evaluated a shared task on different items or task versions."""
    first: dict[str, tuple[Run, TaskRun]] = {}
    for run in runs:
        for name, task in run.tasks.items():
            if name not in first:
                first[name] = (run, task)
                continue
            ref_run, ref = first[name]
            if ref.version != task.version:
                raise UsageError(f"{name} differs between {ref_run.path} (task version {ref.version}) and "
                                 f"{run.path} (version {task.version}); rerun both with one harness version "
                                 "to compare them")
            if ref.item_ids_sha256 != task.item_ids_sha256:
                raise UsageError(f"{name} differs between {ref_run.path} ({ref.n} items) and {run.path} "
                                 f"({task.n} items): different item sets (item_ids_sha256 "
                                 f"{ref.item_ids_sha256[:8]} vs {task.item_ids_sha256[:8]}); evaluate both "
                                 "on the same items (same --limit and data) to compare them")


# -- estimates -----------------------------------------------------------------------------------

def _item_values(task: TaskRun, spec: MetricSpec) -> dict[str, tuple[float, float]]:
    """item -> (value, weight): the rows its value averages (``spec.weight``), 1 for an unweighted metric."""
    return {item: (s[spec.key], s.get(spec.weight, 1.0) if spec.weight else 1.0)
            for item, s in task.scores.items() if spec.key in s}


def units(task: TaskRun, spec: MetricSpec) -> dict[str, tuple[float, float]]:
    """Sampled unit -> (value, weight). Items that name a cluster (``info.cluster``) are pooled into it:
    its value is their weighted mean and its weight their total, so the pooled mean over units equals
    the mean over items while every interval and test treats the cluster as one draw."""
    items = _item_values(task, spec)
    if not task.clusters:
        return items
    sums: dict[str, list[float]] = {}
    for item, (v, w) in items.items():
        acc = sums.setdefault(task.clusters.get(item, item), [0.0, 0.0])
        acc[0] += v * w
        acc[1] += w
    return {unit: (num / den, den) for unit, (num, den) in sums.items()}


def is_pooled(task: TaskRun, spec: MetricSpec) -> bool:
    """Rows nested in units: a weighted metric, or items that share clusters."""
    return spec.weight is not None or bool(task.clusters)


def values(task: TaskRun, spec: MetricSpec) -> dict[str, float]:
    return {unit: v for unit, (v, _) in units(task, spec).items()}


def weights(task: TaskRun, spec: MetricSpec) -> dict[str, float]:
    return {unit: w for unit, (_, w) in units(task, spec).items()}


def is_binary(vals: list[float]) -> bool:
    return all(v in (0.0, 1.0) for v in vals)


def estimate(task: TaskRun, spec: MetricSpec, alpha: float = 0.05) -> Estimate:
    """Mean of the per-item score with a (1 - alpha) interval, in reported units.

    Wilson for 0/1 scores; the normal interval (mean +- z * stderr) otherwise,
    including a "binary" metric whose items hold fractions (pass@1 with n > 1).
    """
    vals = list(values(task, spec).values())
    z = Z95 if alpha == 0.05 else normal_ppf(1 - alpha / 2)
    if not vals:
        return Estimate(math.nan, math.nan, math.nan, 0, "none")
    if is_pooled(task, spec):  # rows pooled over units, SE clustered on the unit
        mean, se = weighted_mean_stderr(vals, list(weights(task, spec).values()))
        lo, hi = normal_interval(mean, se, z) if math.isfinite(se) else (math.nan, math.nan)
        return Estimate(mean * spec.scale, lo * spec.scale, hi * spec.scale, len(vals), "clustered")
    if spec.kind == "binary" and is_binary(vals):
        lo, hi = wilson_interval(sum(vals), len(vals), z)
        mean, method = sum(vals) / len(vals), "wilson"
    else:
        mean, se = mean_stderr(vals)
        lo, hi = normal_interval(mean, se, z) if math.isfinite(se) else (math.nan, math.nan)
        method = "normal"
    return Estimate(mean * spec.scale, lo * spec.scale, hi * spec.scale, len(vals), method)


def paired_values(new: TaskRun, base: TaskRun, spec: MetricSpec) -> tuple[list[float], list[float]]:
    """Baseline and new scores on the items both runs scored, matched by item id."""
    a, b = values(base, spec), values(new, spec)
    shared = sorted(a.keys() & b.keys())
    return [a[i] for i in shared], [b[i] for i in shared]


def paired_units(new: TaskRun, base: TaskRun, spec: MetricSpec) -> tuple[list[float], list[float], list[float],
                                                                          list[float]]:
    """Baseline values and weights, new values and weights, on the units both runs scored, matched by id."""
    a, b, wa, wb = values(base, spec), values(new, spec), weights(base, spec), weights(new, spec)
    shared = sorted(a.keys() & b.keys())
    return [a[i] for i in shared], [wa[i] for i in shared], [b[i] for i in shared], [wb[i] for i in shared]


def compare(new: TaskRun, base: TaskRun, spec: MetricSpec, alpha: float = 0.05) -> Paired:
    """Paired comparison ``new - baseline`` with a (1 - alpha) interval and the two-sided p-value of the same test.

    0/1 scores: Tango's score interval for the difference in accuracy and the
    p-value of that score test (so the interval excludes 0 exactly when
    p < alpha), with the exact McNemar p-value beside it; ``significant``
    needs both, the rule the gate uses. Other scores: paired bootstrap (units
    resampled, fixed seed), percentile interval and the p-value that inverts
    it; for a weighted metric the pooled means are recomputed per resample
    (the cluster bootstrap). Like any bootstrap it is optimistic on very few
    units (under ~20): the resampled spread is the sample's.
    """
    x, wx, y, wy = paired_units(new, base, spec)
    n, s = len(x), spec.scale
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, "none", 0, unit=spec.unit)
    pooled = is_pooled(new, spec) or is_pooled(base, spec)
    if spec.kind == "binary" and not pooled and is_binary(x) and is_binary(y):
        worse = sum(1 for a, b in zip(x, y, strict=True) if a > b)
        better = sum(1 for a, b in zip(x, y, strict=True) if a < b)
        lo, hi = tango_interval(worse, better, n, 1 - alpha)  # interval of the drop (worse - better) / n
        p, p_exact = tango_p_two_sided(worse, better, n), mcnemar_exact(worse, better)
        return Paired((better - worse) / n * s, -hi * s, -lo * s, p, "Tango score", n, worse, better,
                      p_exact=p_exact, significant=p < alpha and p_exact < alpha,
                      mde=mde_paired_binary(n, (worse + better) / n, alpha, sided=2) * s, unit=spec.unit)
    delta = (_pooled(y, wy) - _pooled(x, wx)) * s
    test = "paired cluster bootstrap" if pooled else "paired bootstrap"
    if n < 2:  # one unit: resampling it says nothing about noise
        return Paired(delta, math.nan, math.nan, math.nan, test, n, unit=spec.unit)
    if not pooled:
        boot = sorted(bootstrap_means([(b - a) * s for a, b in zip(x, y, strict=True)]))
    else:
        boot = sorted(d * s for d in bootstrap_weighted_diffs(x, wx, y, wy))
    p = bootstrap_p_two_sided(boot)
    return Paired(delta, percentile(boot, alpha / 2), percentile(boot, 1 - alpha / 2), p, test, n,
                  significant=p < alpha, mde=mde_paired_mean(paired_spread(x, wx, y, wy) * s, n, alpha, sided=2),
                  unit=spec.unit)


def _pooled(v: list[float], w: list[float]) -> float:
    return sum(a * b for a, b in zip(v, w, strict=True)) / sum(w)


def paired_spread(x: list[float], wx: list[float], y: list[float], wy: list[float]) -> float:
    """SD over units of each unit's contribution to the pooled difference (its linearisation).

    Unit i adds w_i (v_i - mean) / mean(w) to a pooled mean; for unweighted
    metrics this is the SD of the per-item paired differences.
    """
    mx, my = _pooled(x, wx), _pooled(y, wy)
    bar_x, bar_y = sum(wx) / len(wx), sum(wy) / len(wy)
    e = [wb * (b - my) / bar_y - wa * (a - mx) / bar_x for a, wa, b, wb in zip(x, wx, y, wy, strict=True)]
    return statistics.stdev(e) if len(e) >= 2 else math.nan
