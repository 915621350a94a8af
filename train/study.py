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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.train import schema as S
from harness.train.classify import check_filter
from harness.train.data import FORMATS, Conversation, SourceSpec
from harness.train.strategies import PAPER_ORDER, STRATEGIES, Stage, named_sources

log = logging.getLogger("harness")

# Every key of every table with its type (harness.train.schema): a study is checked before any work.
TOP = {"name": S.PLAIN_NAME, "base_model": S.STR, "out": S.STR, "seed": S.int_at_least(0), "sources": S.TABLE, "grid": S.TABLE,
       "train": S.TABLE, "eval": S.TABLE, "report": S.TABLE}
SOURCE = {"path": S.STR, "format": S.one_of(*FORMATS), "split": S.STR, "fraction": S.number_in(0, 1, low_open=True),
          "count": S.int_at_least(1), "filter_keywords": S.list_of(S.STR), "filter": S.STR}
_STAGES = S.list_of(S.list_of(S.STR, nonempty=True), nonempty=True)
GRID = {"strategies": S.list_of(S.STR, nonempty=True), "order": S.list_of(S.STR, nonempty=True), "general": S.STR,
        "k": S.list_of(S.RATIO, nonempty=True), "fractions": S.list_of(S.RATIO, nonempty=True),
        "single_sources": S.list_of(S.STR, nonempty=True),
        "custom": S.Kind("a table of named, non-empty stage lists ([grid.custom] name = [[\"math\", \"code@0.5\"], "
                         "[\"general\"]])", lambda v: isinstance(v, dict) and all(_STAGES.ok(x) for x in v.values()))}
TRAIN = {"epochs": S.number_in(0, low_open=True), "lr": S.number_in(0, low_open=True),
         "warmup_ratio": S.number_in(0, 1, high_open=True), "scheduler": S.STR, "batch_size": S.int_at_least(1),
         "grad_accum": S.int_at_least(1), "max_length": S.int_at_least(8), "packing": S.BOOL,
         "lora": S.either(S.BOOL, S.TABLE), "dtype": S.one_of("bf16", "fp32"), "max_steps": S.INT,
         "weight_decay": S.number_in(0), "seed": S.int_at_least(0), "chat_template": S.STR, "gradient_checkpointing": S.BOOL,
         "logging_steps": S.int_at_least(1), "trainer_args": S.TABLE}
LORA = {"r": S.int_at_least(1), "alpha": S.number_in(0, low_open=True), "dropout": S.number_in(0, 1, high_open=True),
        "target_modules": S.either(S.STR, S.list_of(S.STR))}
# The run-level evaluation keys (EvalSpec fields). The options every task reads (limit, seed,
# max_tokens, allow_code_execution: harness.core.options.SharedOptions) sit beside them in [eval];
# each task's own options are its table, [eval.gsm8k], [eval.humaneval], ..., generated from the
# task's options dataclass.
EVAL = {"suites": S.list_of(S.STR, nonempty=True), "every_stage": S.BOOL, "include_base": S.BOOL,
        "backend": S.one_of("hf", "vllm", "auto"), "model_args": S.TABLE, "judge": S.STR, "judge_args": S.STR,
        "judge_base_url": S.STR, "judge_concurrency": S.int_at_least(1), "concurrency": S.int_at_least(1)}
REPORT = {"formats": S.list_of(S.STR), "plots": S.BOOL, "baseline": S.STR}


@dataclass(frozen=True)
class EvalSpec:
    suites: tuple[str, ...]
    shared: Any  # harness.core.options.SharedOptions
    tasks: dict[str, Any]  # task name -> its options dataclass, for the tables given
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
    fraction: float
    stages: tuple[Stage, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # what the strategy's swept parameter fixes: k, source
    axes: dict[str, list[str]] = field(default_factory=dict)  # metadata fields readers plot: {"x", "series"}

    @property
    def k(self) -> float | None:
        return self.meta.get("k")

    @property
    def source(self) -> str | None:
        return self.meta.get("source")

    @property
    def notes(self) -> list[str]:
        return [n for s in self.stages for n in s.notes]


# -- parsing and validation ---------------------------------------------------------------------


def parse_study(data: dict[str, Any], base_dir: Path, out: str | None = None) -> Study:
    """Validate a parsed TOML study; relative data paths are relative to ``base_dir``."""
    S.check_table(data, TOP, "study")
    for key in ("name", "base_model", "sources", "eval"):
        if key not in data:
            raise UsageError(f"study: missing required key {key!r} (see train/examples/tiny_cpu.toml)")
    seed = data.get("seed", 1234)
    sources = tuple(_parse_source(n, t, base_dir, seed) for n, t in data["sources"].items())
    if not sources:
        raise UsageError("[sources] defines no source; add e.g. [sources.math] path = \"gsm8k.jsonl\" format = \"gsm8k\"")
    grid = _parse_grid(data.get("grid", {}), [s.name for s in sources])
    name = data["name"]
    return Study(name=name, base_model=data["base_model"],
                 out=Path(out or data.get("out") or f"studies/{name}"), seed=seed, sources=sources, grid=grid,
                 train=_parse_train(data.get("train", {}), seed), eval=_parse_eval(data["eval"], seed),
                 report=_parse_report(data.get("report", {}), base_dir))


def _parse_source(name: str, t: Any, base_dir: Path, seed: int) -> SourceSpec:
    where = f"[sources.{name}]"
    t = S.check_table(t, SOURCE, where)
    if "path" not in t or "format" not in t:
        raise UsageError(f"{where}: needs path and format (one of {', '.join(FORMATS)})")
    path = t["path"]
    local = Path(path).expanduser() if Path(path).expanduser().is_absolute() else base_dir / path
    if local.exists():
        path = str(local)
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.endswith((".json", ".jsonl", ".gz", ".parquet")):
        raise UsageError(f"{where}: data file {str(local)!r} does not exist (and {path!r} is not a hub dataset id)")
    return SourceSpec(name=name, path=path, format=t["format"], split=t.get("split", "train"),
                      fraction=t.get("fraction"), count=t.get("count"),
                      filter_keywords=tuple(t.get("filter_keywords", ())), seed=seed,
                      filter=check_filter(t.get("filter"), t.get("filter_keywords", ()), where))


def _ratios(values: list[Any], key: str, low_open: bool) -> list[float]:
    """k or fractions: numbers or "1/4" strings in [0, 1] (or (0, 1]), each once."""
    out = [S.ratio(v) for v in values]
    for v, x in zip(values, out, strict=True):
        if x is None or x > 1 or x < 0 or (low_open and x == 0):
            raise UsageError(f"[grid] {key}: {v!r} is outside {'(' if low_open else '['}0, 1]")
    S.no_duplicates(out, "[grid]", key, values)
    return out  # type: ignore[return-value]


def _parse_grid(t: Any, names: list[str]) -> dict[str, Any]:
    t = S.check_table(t, GRID, "[grid]")
    strategies = t.get("strategies", ["multi_task"])
    for s in strategies:
        if s not in STRATEGIES:
            raise UsageError(f"[grid] strategies: unknown strategy {s!r}; choose from: {', '.join(STRATEGIES)}")
    S.no_duplicates(strategies, "[grid]", "strategies")
    order = tuple(t.get("order", [n for n in PAPER_ORDER if n in names] or sorted(names)))
    general = t.get("general", "general")
    single = tuple(t.get("single_sources", sorted(names)))
    custom = t.get("custom", {})
    for key, values in (("order", order), ("single_sources", single)):
        S.no_duplicates(list(values), "[grid]", key)
    if "custom" in strategies and not custom:
        raise UsageError("[grid] strategies has 'custom' but [grid.custom] defines no stage list; "
                         "example: [grid.custom] general_first = [[\"general\"], [\"math\", \"code\"]]")
    _check_custom(custom)
    grid = {"strategies": strategies, "order": order, "general": general, "single_sources": single, "custom": custom}
    missing = sorted(set().union(*(named_sources(s, grid) for s in strategies)) - set(names))
    if missing:
        raise UsageError(f"[grid] names sources {missing} that [sources] does not define ({', '.join(sorted(names))})")
    k = _ratios(t.get("k", [0]), "k", low_open=False)
    fractions = _ratios(t.get("fractions", [1]), "fractions", low_open=True)
    return {**grid, "k": k, "fractions": fractions}


def _check_custom(custom: dict[str, list[list[str]]]) -> None:
    """Each custom stage item is ``source`` or ``source@fraction`` with the fraction in (0, 1]."""
    for name, stages in custom.items():
        for item in (i for stage in stages for i in stage):
            frac = item.partition("@")[2]
            x = S.ratio(frac) if "@" in item else 1.0
            if x is None or not 0 < x <= 1:
                raise UsageError(f"[grid.custom] {name}: {item!r}: the fraction after @ must be a number in (0, 1] "
                                 "(\"code@0.5\", \"code@1/4\")")


def _parse_train(t: Any, seed: int) -> Any:
    from harness.train.sft import LoraOptions, TrainConfig, check_scheduler, check_trainer_args

    t = dict(S.check_table(t, TRAIN, "[train]"))
    lora = t.pop("lora", None)
    if isinstance(lora, dict):
        lora = dict(S.check_table(lora, LORA, "[train.lora]"))
        if isinstance(lora.get("target_modules"), list):
            lora["target_modules"] = tuple(lora["target_modules"])
        lora = LoraOptions(**lora)
    elif lora is True:
        lora = LoraOptions()
    cfg = TrainConfig(**{"seed": seed, **t, "lora": lora or None})
    check_scheduler(cfg.scheduler)
    check_trainer_args(cfg.trainer_args)
    if cfg.chat_template is not None:
        from harness.train.sft import template_text
        template_text(cfg.chat_template)
    return cfg


def _parse_eval(t: Any, seed: int) -> EvalSpec:
    """[eval] and its task tables, checked by building the tasks: a bad task option or a missing
    opt-in fails here, before any data is loaded or any step is trained."""
    from harness.core.options import SharedOptions, from_table, specs
    from harness.tasks import build_tasks, moved_key, names, options_classes, resolve_suites

    if not isinstance(t, dict):
        S.check_table(t, EVAL, "[eval]")
    t = dict(t)
    task_tables = {n: t.pop(n) for n in names() if n in t}
    shared_keys = {s.name for s in specs(SharedOptions)} & set(t)
    shared = from_table(SharedOptions, {"seed": seed, **{k: t.pop(k) for k in shared_keys}}, "[eval]")
    for key in t:
        if key not in EVAL and (moved := moved_key(key)) is not None:
            raise UsageError(f"[eval] {key}: task options moved to the task's own table; write "
                             f"[eval.{moved[0]}] {moved[1]} = {t[key]!r}")
    t = dict(S.check_table(t, EVAL, "[eval]", hints={"model_args": " (e.g. model_args = { dtype = \"float32\" })"}))
    suites = t.pop("suites", None)
    if suites is None:
        raise UsageError("[eval] needs suites, e.g. suites = [\"gsm8k\"]")
    suites = resolve_suites(",".join(suites))
    options = {n: from_table(options_classes()[n], table, f"[eval.{n}]") for n, table in task_tables.items()}
    others = ", ".join(f'"{n}"' for n in suites if n != "humaneval")
    build_tasks(suites, options, shared, opt_in="set allow_code_execution = true in [eval]",
                leave_out=f"suites = [{others}]" if others else "another suite")
    return EvalSpec(suites=suites, shared=shared, tasks=options, **t)


def _parse_report(t: Any, base_dir: Path) -> dict[str, Any]:
    from harness.readout.report import FORMATS

    t = S.check_table(t, REPORT, "[report]")
    formats = S.list_of(S.one_of(*FORMATS), nonempty=True)
    if "formats" in t and not formats.ok(t["formats"]):
        raise S.fail("[report]", "formats", formats, t["formats"])
    baseline = t.get("baseline")
    if baseline is not None:
        path = Path(baseline).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not (path / "summary.json").is_file():
            raise UsageError(f"[report] baseline: {str(path)!r} is not a finished run directory (no summary.json); "
                             "pass a directory written by harness run, or leave baseline out")
        baseline = str(path)
    return {"formats": tuple(t.get("formats", ["md", "html"])), "plots": t.get("plots", True), "baseline": baseline}


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
    """Every source's conversations; a source left with no example is refused before any training."""
    from harness.train.data import load_source

    out = {}
    for spec in study.sources:
        convs, st = load_source(spec)
        log.info("source %s: %d records, %d kept, dropped %s, filter %s removed %d %s", st.name, st.records,
                 st.kept, st.dropped or "none", st.filter, st.filtered, st.filter_labels or "")
        if not convs:
            raise UsageError(f"source {spec.name!r} has 0 examples left ({st.records} records, dropped "
                             f"{st.dropped or 'none'}, {st.filtered} removed by filter {st.filter!r}); check "
                             "its file and its filter")
        out[spec.name] = convs
    return out


def make_plan(study: Study, sources: dict[str, list[Conversation]]) -> list[GridPoint]:
    """Every grid point: each strategy's variants (harness.train.strategies.variants) at each fraction."""
    from harness.train.strategies import build, variants

    g, points = study.grid, []
    scaling = len(g["fractions"]) > 1
    for f in g["fractions"]:
        tag = "" if not scaling and f == 1 else f"-f{f:g}"
        for s in g["strategies"]:
            for v in variants(s, g):
                stages = build(s, sources, fractions=dict.fromkeys(sources, f), seed=study.seed, **v.params)
                empty = [st.name for st in stages if not st.examples]
                if empty:
                    raise UsageError(f"grid point {v.label}{tag}: stage(s) {empty} would train on no example")
                axes = {"x": [*v.axes["x"], *(["fraction"] if scaling else [])],
                        "series": [*v.axes["series"], *(["stage"] if study.eval.every_stage else [])]}
                points.append(GridPoint(f"{v.label}{tag}", s, f, tuple(stages), v.meta, axes))
    return points


def plan_notes(points: list[GridPoint]) -> list[str]:
    """Warnings the plan carries (a proportion rounded up to one example), each once."""
    return list(dict.fromkeys(f"{p.label}: {n}" for p in points for n in p.notes))


def print_plan(points: list[GridPoint]) -> None:
    for p in points:
        stages = " -> ".join(f"[{s.name}: {sum(s.counts().values())} ex, {s.sha256[:8]}]" for s in p.stages)
        print(f"{p.label:28s} {stages}")
    for note in plan_notes(points):
        print(f"note: {note}")


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
                "source": p.source, **p.meta}
        out[p.label] = train_stages(list(p.stages), study.train, base, root, meta)
    return out


def run_config(study: Study, target: str, meta: dict[str, Any]) -> Any:
    from harness.core.models import ModelSpec, parse_model_spec
    from harness.run.runner import JudgeOptions, RunConfig

    e = study.eval
    judge = JudgeOptions(spec=parse_model_spec(e.judge, e.judge_args, e.judge_base_url, flag="[eval] judge")
                         if e.judge else None, concurrency=e.judge_concurrency)
    return RunConfig(model=ModelSpec(kind=e.backend, target=target, args=dict(e.model_args)), suites=e.suites,
                     out=study.out / "runs", shared=e.shared, task_options=e.tasks,
                     judge=judge, concurrency=e.concurrency, label=meta["label"], metadata=meta)


def finished(cfg: Any) -> Path | None:
    """The run directory when a finished run with this exact configuration exists."""
    from harness.run.runner import default_run_id, options_record

    run_dir = cfg.out / default_run_id(cfg)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (config.get("metadata") == json.loads(json.dumps(cfg.metadata))
            and config.get("model", {}).get("target") == cfg.model.target
            and config.get("suites") == list(cfg.suites)
            and config.get("task_options") == json.loads(json.dumps(options_record(cfg))))
    return run_dir if same and (run_dir / "summary.json").exists() else None


def evaluations(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], base: Any) -> list[Any]:
    cfgs = []
    if study.eval.include_base:
        cfgs.append(run_config(study, base.path, {"study": study.name, "label": "base", "strategy": "base", "k": None,
                                                  "fraction": None, "stage": 0, "n_stages": 0,
                                                  "axes": {"x": [], "series": ["strategy"]}}))
    for p in points:
        results = ckpts[p.label]
        chosen = range(len(results)) if study.eval.every_stage else [len(results) - 1]
        for i in chosen:
            label = p.label if i == len(results) - 1 else f"{p.label}-stage{i + 1}"
            cfgs.append(run_config(study, str(results[i].path), {
                "study": study.name, "label": label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction,
                "source": p.source, **p.meta, "stage": i + 1, "n_stages": len(results),
                "stage_name": p.stages[i].name, "final": i == len(results) - 1,
                "checkpoint": results[i].manifest.get("identity"), "axes": p.axes}))
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


def write_study_report(study: Study, run_dirs: list[Path], notes: list[str] = ()) -> str:
    """The comparison report, with the plan's notes (proportions rounded up to one example) at the end."""
    try:
        from harness.readout.report import write_report
    except ImportError:
        raise UsageError("harness.readout.report.write_report is not available in this install; the evaluations are "
                         f"finished under {study.out / 'runs'}; rerun `harness study` once it is") from None
    r = study.report
    text = write_report(run_dirs, study.out / "report", baseline=Path(r["baseline"]) if r["baseline"] else None,
                        formats=r["formats"], plots=r["plots"])
    if not notes:
        return text
    section = "\n## Plan notes\n\n" + "".join(f"- {n}\n" for n in notes)
    md = study.out / "report" / "report.md"
    if md.exists():
        md.write_text(md.read_text(encoding="utf-8").rstrip("\n") + "\n" + section, encoding="utf-8")
    return text.rstrip("\n") + "\n" + section


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
    for note in plan_notes(points):
        log.warning("plan: %s", note)
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
    print(write_study_report(study, run_dirs, plan_notes(points)))
    log.info("study %s: %d stages trained, %d runs evaluated, report in %s (%.1f s)", study.name, trained,
             evaluated, study.out / "report", time.monotonic() - t0)
    return StudyOutcome(trained, evaluated, tuple(run_dirs))


def _write_index(study: Study, points: list[GridPoint], ckpts: dict[str, list[Any]], run_dirs: list[Path]) -> None:
    from harness.core.files import write_json_atomic

    write_json_atomic(study.out / "study.json", {
        "name": study.name, "base_model": study.base_model, "train": asdict(study.train),
        "notes": plan_notes(points),
        "points": [{"label": p.label, "strategy": p.strategy, "k": p.k, "fraction": p.fraction, **p.meta,
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

