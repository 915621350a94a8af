"""The study file: a TOML grid, every key checked against its type, into a frozen ``Study``.

``parse_study`` reads the tables of a ``harness study`` file (``[sources.*]``,
``[grid]``, ``[train]``, ``[eval]``, ``[report]``) through the typed fields of
``harness.train.schema``, so a wrong value fails with one line naming the
table, the key, what was expected and what was given, before any data is
loaded or any step is trained; values that would only fail later (a scheduler
transformers does not know, a report baseline that is not a run, a custom
``name@fraction`` outside (0, 1]) are refused here too. Example::

    study = load_study("train/examples/tiny_cpu.toml")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.train import schema as S
from harness.train.classify import check_filter
from harness.train.data import FORMATS, SourceSpec
from harness.train.holdout import DEFAULT as HOLDOUT_DEFAULT
from harness.train.holdout import SUITE as HOLDOUT_SUITE
from harness.train.strategies import PAPER_ORDER, REGISTRY, named_sources

# Every key of every table with its type (harness.train.schema): a study is checked before any work.
TOP = {"name": S.PLAIN_NAME, "base_model": S.STR, "out": S.STR, "seed": S.int_at_least(0), "sources": S.TABLE,
       "grid": S.TABLE, "train": S.TABLE, "eval": S.TABLE, "report": S.TABLE}
SOURCE = {"path": S.STR, "format": S.one_of(*FORMATS), "split": S.STR, "fraction": S.number_in(0, 1, low_open=True),
          "count": S.int_at_least(1), "filter_keywords": S.list_of(S.STR), "filter": S.STR,
          "holdout": S.int_at_least(0), "max_chars": S.int_at_least(1)}
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
         "weight_decay": S.number_in(0), "seed": S.int_at_least(0), "chat_template": S.STR,
         "gradient_checkpointing": S.BOOL, "logging_steps": S.int_at_least(1), "trainer_args": S.TABLE}
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


def parse_study(data: dict[str, Any], base_dir: Path, out: str | None = None) -> Study:
    """Validate a parsed TOML study; relative data paths are relative to ``base_dir``."""
    S.check_table(data, TOP, "study")
    for key in ("name", "base_model", "sources", "eval"):
        if key not in data:
            raise UsageError(f"study: missing required key {key!r} (see train/examples/tiny_cpu.toml)")
    seed = data.get("seed", 1234)
    wants = _wants_holdout(data["eval"])
    sources = tuple(_parse_source(n, t, base_dir, seed, wants) for n, t in data["sources"].items())
    if not sources:
        raise UsageError("[sources] defines no source; add e.g. [sources.math] path = \"gsm8k.jsonl\" format = \"gsm8k\"")
    grid = _parse_grid(data.get("grid", {}), [s.name for s in sources])
    name = data["name"]
    return Study(name=name, base_model=data["base_model"],
                 out=Path(out or data.get("out") or f"studies/{name}"), seed=seed, sources=sources, grid=grid,
                 train=_parse_train(data.get("train", {}), seed), eval=_parse_eval(data["eval"], seed, sources),
                 report=_parse_report(data.get("report", {}), base_dir))


def _wants_holdout(t: Any) -> bool:
    """Whether [eval] suites names the held-out probes (harness.train.holdout)."""
    suites = t.get("suites") if isinstance(t, dict) else None
    return isinstance(suites, list) and HOLDOUT_SUITE in suites


def _parse_source(name: str, t: Any, base_dir: Path, seed: int, holdout: bool = False) -> SourceSpec:
    where = f"[sources.{name}]"
    t = S.check_table(t, SOURCE, where)
    if "holdout" in t and not holdout:
        raise UsageError(f"{where} holdout: the study scores no held-out probe; add \"{HOLDOUT_SUITE}\" to [eval] "
                         "suites, or drop the key")
    if "path" not in t or "format" not in t:
        raise UsageError(f"{where}: needs path and format (one of {', '.join(FORMATS)})")
    if "fraction" in t and "count" in t:
        raise UsageError(f"{where}: give fraction or count, not both (got fraction = {t['fraction']!r}, "
                         f"count = {t['count']!r})")
    path = t["path"]
    local = Path(path).expanduser() if Path(path).expanduser().is_absolute() else base_dir / path
    if local.exists():
        path = str(local)
    elif not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.endswith((".json", ".jsonl", ".gz", ".parquet")):
        raise UsageError(f"{where}: data file {str(local)!r} does not exist (and {path!r} is not a hub dataset id)")
    return SourceSpec(name=name, path=path, format=t["format"], split=t.get("split", "train"),
                      fraction=t.get("fraction"), count=t.get("count"),
                      filter_keywords=tuple(t.get("filter_keywords", ())), seed=seed,
                      filter=check_filter(t.get("filter"), t.get("filter_keywords", ()), where),
                      holdout=t.get("holdout", HOLDOUT_DEFAULT) if holdout else 0, max_chars=t.get("max_chars"))


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
        if s not in REGISTRY:
            raise UsageError(f"[grid] strategies: unknown strategy {s!r}; choose from: {', '.join(REGISTRY)}")
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
    from harness.train.config import LoraOptions, TrainConfig, check_scheduler, check_trainer_args

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
        from harness.train.templates import template_text
        template_text(cfg.chat_template)
    return cfg


def _parse_eval(t: Any, seed: int, sources: tuple[SourceSpec, ...] = ()) -> EvalSpec:
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
    suites = resolve_suites(",".join(_expand_holdout(suites, sources)))
    options = {n: from_table(options_classes()[n], table, f"[eval.{n}]") for n, table in task_tables.items()}
    others = ", ".join(f'"{n}"' for n in suites if n != "humaneval")
    build_tasks(suites, options, shared, opt_in="set allow_code_execution = true in [eval]",
                leave_out=f"suites = [{others}]" if others else "another suite")
    return EvalSpec(suites=suites, shared=shared, tasks=options, **t)


def _expand_holdout(suites: list[str], sources: tuple[SourceSpec, ...]) -> list[str]:
    """``"holdout"`` -> one ``holdout_<source>`` task per source that holds examples out (registered here)."""
    from harness.train.holdout import probe_class

    if HOLDOUT_SUITE not in suites:
        return suites
    names = [probe_class(s.name).name for s in sources if s.holdout]
    if not names:
        raise UsageError(f"[eval] suites names \"{HOLDOUT_SUITE}\", but every source has holdout = 0; give a "
                         "source holdout = N (default 200) or drop the suite")
    i = suites.index(HOLDOUT_SUITE)
    return [*suites[:i], *names, *suites[i + 1:]]


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
