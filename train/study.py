"""``harness study STUDY.toml``: data sources -> strategies -> checkpoints -> evaluation -> report.

A study is a declarative grid after Dong et al. 2023 (arXiv 2310.05492):
base model, sources, strategies (with DMT's k values and data fractions),
training arguments, evaluation suite and judge. The command

1. validates the whole file before any work (unknown keys, k outside [0, 1],
   bad fractions, unknown suites, missing files all fail at once, exit 2);
2. loads the sources and builds every grid point's stages (``--dry-run``
   prints this plan and stops);
3. trains the stage checkpoints that are missing; a checkpoint is named by
   the hash of (base fingerprint, hyperparameters, data of every stage so
   far), so finished ones, and prefixes shared by two strategies, are reused;
4. evaluates every final checkpoint (every stage with ``every_stage = true``)
   through ``harness.run.runner.run``; a finished run (summary.json, same config)
   is skipped, an interrupted one resumes from its journal;
5. writes the comparison report with plots (``harness.readout.report.write_report``).

Rerunning a finished study trains and evaluates nothing. Multi-GPU training
runs the same file under a launcher, then ``harness study`` evaluates::

    torchrun --nproc_per_node 8 -m harness.train.study paper_grid.toml --train-only
    harness study paper_grid.toml

See train/examples/tiny_cpu.toml (minutes on CPU) and paper_grid.toml.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.train.data import FORMATS, Conversation, SourceSpec
from harness.train.strategies import PAPER_ORDER, STRATEGIES, Stage

log = logging.getLogger("harness")

TOP_KEYS = {"name", "base_model", "out", "seed", "sources", "grid", "train", "eval", "report"}
SOURCE_KEYS = {"path", "format", "split", "fraction", "count", "filter_keywords"}
GRID_KEYS = {"strategies", "order", "general", "k", "fractions", "single_sources", "custom"}
EVAL_KEYS = {"suites", "every_stage", "include_base", "backend", "model_args", "judge", "judge_args",
             "judge_base_url", "judge_concurrency", "concurrency", "limit", "seed", "max_tokens", "num_fewshot",
             "gsm8k_data", "humaneval_mode", "n", "temperature", "allow_code_execution", "exec_timeout",
             "exec_workers", "judge_repeats"}
REPORT_KEYS = {"formats", "plots", "baseline"}
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


@dataclass(frozen=True)
class EvalSpec:
    suites: tuple[str, ...]
    options: dict[str, Any]  # TaskOptions fields
    every_stage: bool = False
    include_base: bool = False
    backend: str = "hf"
    model_args: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None
    judge_args: str | None = None
    judge_base_url: str | None = None
    judge_concurrency: int = 16
    concurrency: int = 16


@dataclass(frozen=True)
class Study:
    name: str
    base_model: str
    out: Path
    seed: int
    sources: tuple[SourceSpec, ...]
    grid: dict[str, Any]
    train: Any  # TrainConfig
    eval: EvalSpec
    report: dict[str, Any]


@dataclass(frozen=True)
class GridPoint:
    label: str
    strategy: str
    k: float | None
    fraction: float
    stages: tuple[Stage, ...]
    source: str | None = None


# -- parsing and validation ---------------------------------------------------------------------


def _keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return table


def _number(value: Any, where: str, low: float, high: float, low_open: bool = False) -> float:
    """A number or a fraction string like "1/256", checked against [low, high]."""
    try:
        x = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise UsageError(f"{where}: {value!r} is not a number (write 0.25 or \"1/4\")") from None
    if x > high or x < low or (low_open and x == low):
        raise UsageError(f"{where}: {value!r} is outside {'(' if low_open else '['}{low:g}, {high:g}]")
    return x


def _list(value: Any, where: str) -> list[Any]:
    if isinstance(value, str | int | float):
        return [value]
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list")
    return value


def parse_study(data: dict[str, Any], base_dir: Path, out: str | None = None) -> Study:
    """Validate a parsed TOML study; relative data paths are relative to ``base_dir``."""
    _keys(data, TOP_KEYS, "study")
    for key in ("name", "base_model", "sources", "eval"):
        if key not in data:
            raise UsageError(f"study: missing required key {key!r} (see train/examples/tiny_cpu.toml)")
    seed = int(data.get("seed", 1234))
    sources = tuple(_parse_source(n, t, base_dir, seed) for n, t in _keys(data["sources"], set(data["sources"]),
                                                                         "[sources]").items())
    if not sources:
        raise UsageError("[sources] defines no source; add e.g. [sources.math] path = \"gsm8k.jsonl\" format = \"gsm8k\"")
    grid = _parse_grid(data.get("grid", {}), {s.name for s in sources})
    name = str(data["name"])
    return Study(name=name, base_model=str(data["base_model"]),
                 out=Path(out or data.get("out") or f"studies/{name}"), seed=seed, sources=sources, grid=grid,
                 train=_parse_train(data.get("train", {}), seed), eval=_parse_eval(data["eval"]),
                 report=_parse_report(data.get("report", {}), base_dir))


def _parse_source(name: str, t: Any, base_dir: Path, seed: int) -> SourceSpec:
    where = f"[sources.{name}]"
    t = _keys(t, SOURCE_KEYS, where)
    if "path" not in t or "format" not in t:
        raise UsageError(f"{where}: needs path and format (one of {', '.join(FORMATS)})")
    if t["format"] not in FORMATS:
        raise UsageError(f"{where}: unknown format {t['format']!r}; choose from: {', '.join(FORMATS)}")
    path = str(t["path"])
    local = Path(path).expanduser() if Path(path).expanduser().is_absolute() else base_dir / path
    if local.exists():
        path = str(local)
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.endswith((".json", ".jsonl", ".gz", ".parquet")):
        raise UsageError(f"{where}: data file {str(local)!r} does not exist (and {path!r} is not a hub dataset id)")
    fraction = _number(t["fraction"], f"{where} fraction", 0, 1, low_open=True) if "fraction" in t else None
    count = t.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise UsageError(f"{where} count: expected a positive integer, got {count!r}")
    return SourceSpec(name=name, path=path, format=t["format"], split=str(t.get("split", "train")), fraction=fraction,
                      count=count, filter_keywords=tuple(t.get("filter_keywords", ())), seed=seed)


def _parse_grid(t: Any, names: set[str]) -> dict[str, Any]:
    t = _keys(t, GRID_KEYS, "[grid]")
    strategies = [str(s) for s in _list(t.get("strategies", ["multi_task"]), "[grid] strategies")]
    for s in strategies:
        if s not in STRATEGIES:
            raise UsageError(f"[grid] strategies: unknown strategy {s!r}; choose from: {', '.join(STRATEGIES)}")
    order = tuple(t.get("order", [n for n in PAPER_ORDER if n in names] or sorted(names)))
    general = str(t.get("general", "general"))
    single = tuple(t.get("single_sources", sorted(names)))
    custom = t.get("custom", {})
    if "custom" in strategies and not custom:
        raise UsageError("[grid] strategies has 'custom' but [grid.custom] defines no stage list; "
                         "example: [grid.custom] general_first = [[\"general\"], [\"math\", \"code\"]]")
    referenced = set(order) | set(single) | {i.split("@")[0] for st in custom.values() for s in st for i in s}
    if any(s in strategies for s in ("mixed_sequential", "dmt")):
        referenced.add(general)
    missing = sorted(referenced - names) if strategies != ["multi_task"] else []
    if missing:
        raise UsageError(f"[grid] names sources {missing} that [sources] does not define ({', '.join(sorted(names))})")
    k = [_number(v, "[grid] k", 0, 1) for v in _list(t.get("k", [0]), "[grid] k")]
    fractions = [_number(v, "[grid] fractions", 0, 1, low_open=True) for v in _list(t.get("fractions", [1]),
                                                                                        "[grid] fractions")]
    return {"strategies": strategies, "order": order, "general": general, "k": k, "fractions": fractions,
            "single_sources": single, "custom": custom}


def _parse_train(t: Any, seed: int) -> Any:
    from harness.train.sft import LoraOptions, TrainConfig

    allowed = {f.name for f in fields(TrainConfig)}
    t = dict(_keys(t, allowed, "[train]"))
    lora = t.pop("lora", None)
    if isinstance(lora, dict):
        lora = _keys(lora, LORA_KEYS, "[train.lora]")
        if "target_modules" in lora and not isinstance(lora["target_modules"], str):
            lora = {**lora, "target_modules": tuple(lora["target_modules"])}
        lora = LoraOptions(**lora)
    elif lora is True:
        lora = LoraOptions()
    elif lora not in (None, False):
        raise UsageError("[train] lora: expected true/false or a table [train.lora] with r, alpha, dropout")
    cfg = TrainConfig(**{"seed": seed, **t, "lora": lora or None})
    _check_train(cfg)
    return cfg


def _check_train(cfg: Any) -> None:
    checks = [(cfg.epochs > 0, "epochs must be > 0"), (cfg.lr > 0, "lr must be > 0"),
              (0 <= cfg.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
              (cfg.batch_size >= 1 and cfg.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
              (cfg.max_length >= 8, "max_length must be >= 8 tokens"),
              (cfg.dtype in ("bf16", "fp32"), f"dtype must be bf16 or fp32, got {cfg.dtype!r}"),
              (cfg.logging_steps >= 1, "logging_steps must be >= 1")]
    for ok, message in checks:
        if not ok:
            raise UsageError(f"[train] {message}")
    if cfg.chat_template is not None:
        from harness.train.sft import template_text
        template_text(cfg.chat_template)


def _parse_eval(t: Any) -> EvalSpec:
    from harness.tasks import resolve_suites

    t = dict(_keys(t, EVAL_KEYS, "[eval]"))
    suites = t.pop("suites", None)
    if suites is None:
        raise UsageError("[eval] needs suites, e.g. suites = [\"gsm8k\"]")
    suites = resolve_suites(",".join(_list(suites, "[eval] suites")))
    if t.get("limit") is not None and t["limit"] <= 0:
        raise UsageError(f"[eval] limit must be a positive number of items, got {t['limit']}")
    if t.get("backend", "hf") not in ("hf", "vllm", "auto"):
        raise UsageError(f"[eval] backend must be hf, vllm or auto, got {t['backend']!r}")
    spec_keys = {f.name for f in fields(EvalSpec)} - {"suites", "options"}
    options = {k: v for k, v in t.items() if k not in spec_keys}
    return EvalSpec(suites=suites, options=options, **{k: v for k, v in t.items() if k in spec_keys})


def _parse_report(t: Any, base_dir: Path) -> dict[str, Any]:
    t = _keys(t, REPORT_KEYS, "[report]")
    formats = tuple(_list(t.get("formats", ["md", "html"]), "[report] formats"))
    baseline = t.get("baseline")
    return {"formats": formats, "plots": bool(t.get("plots", True)),
            "baseline": str(base_dir / baseline) if baseline else None}


def load_study(path: str, out: str | None = None) -> Study:
    import tomllib

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise UsageError(f"study file {path!r} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"study file {path!r} is not valid TOML: {exc}") from None
    return parse_study(data, p.resolve().parent, out)


# -- plan ---------------------------------------------------------------------------------------


def load_sources(study: Study) -> dict[str, list[Conversation]]:
    from harness.train.data import load_source

    out = {}
    for spec in study.sources:
        convs, st = load_source(spec)
        log.info("source %s: %d records, %d kept, dropped %s, keyword-filtered %d", st.name, st.records, st.kept,
                 st.dropped or "none", st.filtered)
        out[spec.name] = convs
    return out


def make_plan(study: Study, sources: dict[str, list[Conversation]]) -> list[GridPoint]:
    from harness.train.strategies import build

    g, points = study.grid, []
    for f in g["fractions"]:
        tag = "" if len(g["fractions"]) == 1 and f == 1 else f"-f{f:g}"
        fractions = dict.fromkeys(sources, f)
        common = {"fractions": fractions, "seed": study.seed, "order": g["order"], "general": g["general"]}
        for s in g["strategies"]:
            if s == "single":
                points += [GridPoint(f"single-{n}{tag}", s, None, f, tuple(build(s, sources, source=n, **common)), n)
                           for n in g["single_sources"]]
            elif s == "dmt":
                points += [GridPoint(f"dmt-k{k:g}{tag}", s, k, f, tuple(build(s, sources, k=k, **common)))
                           for k in g["k"]]
            elif s == "custom":
                points += [GridPoint(f"custom-{name}{tag}", s, None, f,
                                     tuple(build(s, sources, stages=stages, **common)))
                           for name, stages in g["custom"].items()]
            else:
                points.append(GridPoint(f"{s}{tag}", s, None, f, tuple(build(s, sources, **common))))
    return points


def print_plan(points: list[GridPoint]) -> None:
    for p in points:
        stages = " -> ".join(f"[{s.name}: {sum(s.counts().values())} ex, {s.sha256[:8]}]" for s in p.stages)
        print(f"{p.label:28s} {stages}")


# -- base model, training, evaluation -----------------------------------------------------------


def resolve_base(study: Study) -> Any:
    from harness.core.models import EMBEDDED_ALIASES, ModelSpec, check_model_target, fingerprint_checkpoint
    from harness.train.sft import BaseModel

    target = study.base_model
    if target in EMBEDDED_ALIASES:
        from harness.adapters import resolve_target
        target = resolve_target(ModelSpec("hf", target))
    elif not Path(target).expanduser().exists():
        check_model_target(ModelSpec("hf", target), flag="base_model")
        from huggingface_hub import snapshot_download
        try:
            target = snapshot_download(target)
        except Exception as exc:  # offline, gated, missing: the user's to fix
            raise UsageError(f"base_model {study.base_model!r} cannot be fetched from the hub ({exc}); "
                             "pass a local checkpoint directory") from None
    else:
        check_model_target(ModelSpec("hf", target), flag="base_model")
    return BaseModel(str(Path(target).expanduser().resolve()), fingerprint_checkpoint(Path(target).expanduser()))


def train_all(study: Study, points: list[GridPoint], base: Any) -> dict[str, list[Any]]:
    from harness.train.sft import train_stages

    root = study.out / "checkpoints"
    out = {}
    for p in points:
        meta = {"study": study.name, "label": p.label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                "source": p.source}
        out[p.label] = train_stages(list(p.stages), study.train, base, root, meta)
    return out


def run_config(study: Study, target: str, meta: dict[str, Any]) -> Any:
    from harness.core.models import ModelSpec, parse_model_spec
    from harness.run.runner import JudgeOptions, RunConfig, TaskOptions

    e = study.eval
    judge = JudgeOptions(spec=parse_model_spec(e.judge, e.judge_args, e.judge_base_url, flag="[eval] judge")
                         if e.judge else None, concurrency=e.judge_concurrency)
    return RunConfig(model=ModelSpec(kind=e.backend, target=target, args=dict(e.model_args)), suites=e.suites,
                     out=study.out / "runs", task_options=TaskOptions(**{"seed": study.seed, **e.options}),
                     judge=judge, concurrency=e.concurrency, label=meta["label"], metadata=meta)


def finished(cfg: Any) -> Path | None:
    """The run directory when a finished run with this exact configuration exists."""
    from harness.run.runner import default_run_id

    run_dir = cfg.out / default_run_id(cfg)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (config.get("metadata") == json.loads(json.dumps(cfg.metadata))
            and config.get("model", {}).get("target") == cfg.model.target
            and config.get("suites") == list(cfg.suites)
            and config.get("task_options") == json.loads(json.dumps(asdict(cfg.task_options))))
    return run_dir if same and (run_dir / "summary.json").exists() else None


def evaluations(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], base: Any) -> list[Any]:
    cfgs = []
    if study.eval.include_base:
        cfgs.append(run_config(study, base.path, {"study": study.name, "label": "base", "strategy": "base", "k": None,
                                                  "fraction": None, "stage": 0, "n_stages": 0}))
    for p in points:
        results = ckpts[p.label]
        chosen = range(len(results)) if study.eval.every_stage else [len(results) - 1]
        for i in chosen:
            label = p.label if i == len(results) - 1 else f"{p.label}-stage{i + 1}"
            cfgs.append(run_config(study, str(results[i].path), {
                "study": study.name, "label": label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                "source": p.source, "stage": i + 1, "n_stages": len(results), "stage_name": p.stages[i].name,
                "final": i == len(results) - 1, "checkpoint": results[i].manifest.get("identity")}))
    return cfgs


def evaluate_all(cfgs: list[Any]) -> tuple[list[Path], int]:
    from harness.run.runner import run

    run_dirs, ran = [], 0
    for cfg in cfgs:
        done = finished(cfg)
        if done is not None:
            log.info("eval %s: finished run %s reused", cfg.metadata["label"], done)
            run_dirs.append(done)
            continue
        run_dirs.append(run(cfg))
        ran += 1
    return run_dirs, ran


def write_study_report(study: Study, run_dirs: list[Path]) -> str:
    try:
        from harness.readout.report import write_report
    except ImportError:
        raise UsageError("harness.readout.report.write_report is not available in this install; the evaluations are "
                         f"finished under {study.out / 'runs'}; rerun `harness study` once it is") from None
    r = study.report
    return write_report(run_dirs, study.out / "report", baseline=Path(r["baseline"]) if r["baseline"] else None,
                        formats=r["formats"], plots=r["plots"])


@dataclass(frozen=True)
class StudyOutcome:
    trained: int
    evaluated: int
    run_dirs: tuple[Path, ...]


def run_study(study: Study, dry_run: bool = False, train_only: bool = False) -> StudyOutcome:
    t0 = time.monotonic()
    if not train_only:
        run_config(study, "plan-check", {"label": "check"})  # a bad judge or task option fails now, not after training
    points = make_plan(study, load_sources(study))
    log.info("plan: %d grid points, %d stages (%.1f s)", len(points), sum(len(p.stages) for p in points),
             time.monotonic() - t0)
    if dry_run:
        print_plan(points)
        return StudyOutcome(0, 0, ())
    base = resolve_base(study)
    ckpts = train_all(study, points, base)
    trained = sum(r.trained for rs in ckpts.values() for r in rs)
    if train_only or int(os.environ.get("RANK", "0")) != 0:
        return StudyOutcome(trained, 0, ())
    run_dirs, evaluated = evaluate_all(evaluations(study, points, ckpts, base))
    _write_index(study, points, ckpts, run_dirs)
    print(write_study_report(study, run_dirs))
    log.info("study %s: %d stages trained, %d runs evaluated, report in %s (%.1f s)", study.name, trained,
             evaluated, study.out / "report", time.monotonic() - t0)
    return StudyOutcome(trained, evaluated, tuple(run_dirs))


def _write_index(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], run_dirs: list[Path]) -> None:
    from harness.core.journal import write_json_atomic

    write_json_atomic(study.out / "study.json", {
        "name": study.name, "base_model": study.base_model, "train": asdict(study.train),
        "points": [{"label": p.label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                    "stages": [{"name": s.name, "counts": s.counts(), "sha256": s.sha256,
                                "checkpoint": str(r.path)} for s, r in zip(p.stages, ckpts[p.label], strict=True)]}
                   for p in points],
        "runs": [str(d) for d in run_dirs]})


def main_study(args: argparse.Namespace) -> int:
    study = load_study(args.study_file, args.out)
    run_study(study, dry_run=args.dry_run, train_only=getattr(args, "train_only", False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.train.study STUDY.toml --train-only``: the entry point for torchrun/accelerate."""
    from harness.core.errors import EngineError

    p = argparse.ArgumentParser(prog="python -m harness.train.study")
    p.add_argument("study_file")
    p.add_argument("--out", default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--train-only", action="store_true", help="train missing checkpoints; evaluate later")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return main_study(args)
    except (UsageError, EngineError) as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())

