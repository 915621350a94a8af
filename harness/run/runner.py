"""Run orchestration: plan -> generate -> judge -> score -> summarize -> report.

Each stage reads only what the previous one wrote under the run directory:

    runs/<run-id>/config.json                 resolved config, output identities, versions
    runs/<run-id>/<task>.generations.jsonl    journal: one checksummed record per request
    runs/<run-id>/<task>.loglikelihood.jsonl  the same, for a task whose requests are log-likelihood requests
    runs/<run-id>/<task>.judgments.jsonl      judge journal (tasks that need a judge)
    runs/<run-id>/<task>.judge_ratings.jsonl  likelihood judging: the judge's scores of each rating
    runs/<run-id>/<task>.<stage>.jsonl        task journals (execution verdicts)
    runs/<run-id>/<task>.samples.jsonl        one row per item: prompt, completions, scores, error
    runs/<run-id>/summary.json                aggregated metrics per task
    runs/<run-id>/report.md                   the standardized table for this run

The run id is derived from the configuration (endpoint included), so
rerunning the same command resumes: a journaled completion is reused when its
key (the model's output identity, computed from files without loading it,
plus the full request; never the task version) matches. When every request is
journaled no model is loaded. Scoring is ``harness.run.score``, the same stage
``harness score RUN_DIR`` runs offline.

Example: ``harness run --model smollm2-135m-instruct --suite gsm8k --limit 50``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness import RUN_FORMAT, __version__
from harness.core.env import redact
from harness.core.errors import UsageError
from harness.core.files import write_json_atomic
from harness.core.models import (
    EXECUTION_ARGS,
    ModelSpec,
    check_model_target,
    endpoint_url,
    output_identity,
    parse_model_spec,
    resolved_base_url,
)
from harness.core.options import Options, SharedOptions
from harness.core.records import Task, sha256_json
from harness.run.passes import LazyAdapter, request_kind
from harness.run.rundir import RunDir

log = logging.getLogger("harness")


@dataclass(frozen=True)
class JudgeOptions:
    spec: ModelSpec | None = None
    concurrency: int = 16


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec
    suites: tuple[str, ...]
    out: Path
    shared: SharedOptions = field(default_factory=SharedOptions)
    # Each suite's own options (harness.core.options dataclasses); a suite left out gets its defaults.
    task_options: Mapping[str, Options] = field(default_factory=dict)
    judge: JudgeOptions = field(default_factory=JudgeOptions)
    run_id: str | None = None
    fresh: bool = False
    chat_template: str | None = None  # file path
    concurrency: int = 16
    label: str | None = None
    baseline: str | None = None
    fail_on_regression: bool = False
    max_drop: str | None = None
    alpha: float = 0.05
    # Fields the training study adds to every run it evaluates (strategy, k, stage...).
    metadata: dict[str, Any] = field(default_factory=dict)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Every flag parsed and checked here, before any data or model is touched."""
    from harness.core.options import from_namespace
    from harness.tasks import options_from_flags, resolve_suites

    suites = resolve_suites(args.suite)
    for flag, value in (("--concurrency", args.concurrency), ("--judge-concurrency", args.judge_concurrency)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1 requests in flight, got {value}")
    shared = from_namespace(SharedOptions, args)
    task_options = options_from_flags(args, suites)
    judge = JudgeOptions(
        spec=parse_model_spec(args.judge, args.judge_args, args.judge_base_url, flag="--judge") if args.judge else None,
        concurrency=args.judge_concurrency)
    model = parse_model_spec(args.model, args.model_args, args.base_url)
    suites = _leave_out_of_all(suites, args.suite, model)
    task_options = {name: opts for name, opts in task_options.items() if name in suites}
    if args.baseline or args.max_drop is not None:
        _check_gate_flags(args.max_drop, args.alpha, suites)  # now, not after the whole run
    return RunConfig(model=model, suites=suites, out=Path(args.out), shared=shared,  # type: ignore[arg-type]
                     task_options=task_options, judge=judge, run_id=args.run_id, fresh=args.fresh,
                     chat_template=args.chat_template, concurrency=args.concurrency, label=args.label,
                     baseline=args.baseline, fail_on_regression=args.fail_on_regression, max_drop=args.max_drop,
                     alpha=args.alpha)


def _check_gate_flags(max_drop: str | None, alpha: float, suites: tuple[str, ...]) -> None:
    from harness.readout.gate import check_alpha, parse_max_drop

    check_alpha(alpha)
    for name in parse_max_drop(max_drop):
        if name.split(".", 1)[0] not in suites:
            raise UsageError(f"--max-drop names {name!r}, but this run evaluates {', '.join(suites)}; "
                             "write TASK=POINTS or TASK.METRIC=POINTS for one of them")


def options_record(cfg: RunConfig) -> dict[str, Any]:
    """What config.json records as ``task_options`` (and ``harness score`` rebuilds tasks from)."""
    from harness.core.options import as_dict
    from harness.tasks import options_classes

    record: dict[str, Any] = {"shared": as_dict(cfg.shared)}
    for name, cls in options_classes(cfg.suites).items():
        record[name] = as_dict(cfg.task_options.get(name) or cls())
    return record


def main_run(args: argparse.Namespace) -> int:
    from harness.run.score import exit_code

    cfg = config_from_args(args)
    run_dir, summary = run_with_summary(cfg)
    code = exit_code(run_dir, summary)
    if cfg.baseline:
        from harness.readout.gate import gate_runs
        try:
            gate = gate_runs(run_dir, Path(cfg.baseline), cfg.max_drop, cfg.alpha)
        except UsageError as exc:
            if cfg.fail_on_regression:
                raise
            log.warning("comparison with --baseline skipped: %s", exc)
            return code
        if cfg.fail_on_regression:
            return max(code, gate)
    return code


def run(cfg: RunConfig, connect: Connect | None = None) -> Path:
    """Run every task of the config; return the run directory."""
    return run_with_summary(cfg, connect)[0]


def run_with_summary(cfg: RunConfig, connect: Connect | None = None) -> tuple[Path, dict[str, Any]]:
    """plan -> generate -> judge -> score. ``connect`` turns a model spec into a lazily built adapter
    (tests pass one that needs no torch); every preflight passes before the run directory is touched."""
    from harness.run.rundir import open_run_dir

    t0 = time.monotonic()
    plan = _plan(cfg, connect or connect_adapter)
    with open_run_dir(cfg.out, plan.run_id) as rd:
        _resume_or_fresh(rd, cfg, plan.model)
        log.info("plan: %s via %s | %s | run dir %s (%.1f s)", cfg.model.label,
                 _engine_label(cfg.model, plan.model.identity),
                 ", ".join(f"{t.name}={len(plan.examples[t.name])}" for t in plan.tasks), rd.path,
                 time.monotonic() - t0)
        summary = _execute(cfg, plan, rd.path, t0)
    log.info("done: %s (%.1f s)", rd.path, time.monotonic() - t0)
    return rd.path, summary


def _engine_label(spec: ModelSpec, identity: dict[str, Any]) -> str:
    """The backend that runs the model (config.json's identity records it), and why for an ``auto`` spec."""
    kind = str(identity.get("kind") or spec.kind)
    if spec.kind != "auto":
        return kind
    from harness.adapters import engine_choice

    chosen, why = engine_choice(spec)
    return f"{kind} ({why})" if chosen == kind else kind


@dataclass(frozen=True)
class Plan:
    """Everything checked before the run directory is touched."""

    run_id: str
    tasks: list[Task]
    examples: dict[str, list[Any]]
    model: LazyAdapter
    judge: LazyAdapter | None
    judge_spec: ModelSpec | None


def _plan(cfg: RunConfig, connect: Connect) -> Plan:
    from harness.run.rundir import check_run_id
    from harness.tasks import build_tasks

    run_id = check_run_id(cfg.run_id) if cfg.run_id is not None else default_run_id(cfg)
    check_model_target(cfg.model)
    if cfg.judge.spec:
        check_model_target(cfg.judge.spec, flag="--judge")
    chat_template = _read_chat_template(cfg.chat_template)
    tasks = build_tasks(cfg.suites, cfg.task_options, cfg.shared)
    _check_scorable(cfg.model, tasks)
    _check_embeddable(cfg.model, tasks)
    examples = {t.name: t.load(cfg.shared.limit) for t in tasks}  # bad data fails here, before the model
    model = connect(cfg.model, "model", chat_template=chat_template, concurrency=cfg.concurrency,
                    needs_chat=any(t.needs_chat for t in tasks))
    judge_spec = _judge_spec(cfg, tasks)
    for t in tasks:
        if t.needs_judge and judge_spec is not None:
            t.use_judge(judge_spec)  # a judge mode this judge cannot serve fails here, in one line
    # An unreachable judge fails now, not after hours of generation, and before --fresh clears anything.
    judge = None if judge_spec is None else connect(judge_spec, "judge", chat_template=None,
                                                    concurrency=cfg.judge.concurrency, needs_chat=True)
    if cfg.baseline:
        from harness.readout.gate import preflight as preflight_baseline
        preflight_baseline(Path(cfg.baseline), {t.name: (t.version, [ex.id for ex in examples[t.name]])
                                                for t in tasks})
    return Plan(run_id, tasks, examples, model, judge, judge_spec)


def _execute(cfg: RunConfig, plan: Plan, run_dir: Path, t0: float) -> dict[str, Any]:
    from harness.run.passes import generate_task, judge_ratings_task, judge_task
    from harness.run.score import score_run

    config = _config_record(cfg, run_dir, plan.model, plan.tasks, plan.judge_spec, plan.judge)
    write_json_atomic(run_dir / "config.json", config)
    # Every generation pass first, then the model is released before judging, so a
    # local judge (hf:/vllm:) never shares the GPU with the model under test.
    try:
        generated = {t.name: generate_task(t, plan.examples[t.name], plan.model, run_dir) for t in plan.tasks}
        if plan.model.loaded:
            config["adapter"] = redact(plan.model.describe())
    finally:
        plan.model.close()
    if plan.judge is not None:
        try:
            for t in plan.tasks:
                if t.needs_judge:
                    judge_task(t, plan.examples[t.name], generated[t.name], plan.judge, run_dir)
                    judge_ratings_task(t, plan.examples[t.name], generated[t.name], plan.judge, run_dir)
        finally:
            plan.judge.close()
    summary = score_run(run_dir, plan.tasks, plan.examples, config, replace=True, keep_old="on_new_version")
    config["finished_at"] = _now()
    config["wall_seconds"] = round(time.monotonic() - t0, 3)
    write_json_atomic(run_dir / "config.json", config)
    return summary


class Connect(Protocol):
    def __call__(self, spec: ModelSpec, role: str, *, chat_template: str | None, concurrency: int,
                 needs_chat: bool) -> LazyAdapter: ...


def connect_adapter(spec: ModelSpec, role: str, *, chat_template: str | None, concurrency: int,
                    needs_chat: bool) -> LazyAdapter:
    """Check and preflight a model, compute its output identity from files; load nothing yet."""
    from harness.adapters import _gpu_present, build_adapter, preflight, resolve_kind, resolve_target

    flag = "--judge" if role == "judge" else "--model"
    check_model_target(spec, flag=flag)
    kind = resolve_kind(spec)

    def build() -> Any:
        return build_adapter(spec, chat_template=chat_template, concurrency=concurrency, needs_chat=needs_chat,
                             role=role)

    client = None
    if kind == "openai":
        # An HTTP client loads nothing and its health check is the preflight: built now, a
        # server that dies later (a judge after hours of generation) is an engine failure, exit 1.
        client = build()
    else:
        preflight(spec, role=role)
    target = spec.target if kind == "openai" else resolve_target(spec)
    accelerator = "gpu" if kind != "openai" and _gpu_present() else "cpu"
    identity = redact(output_identity(spec, kind=kind, target=target, chat_template=chat_template,
                                      accelerator=accelerator))
    return LazyAdapter(identity, (lambda: client) if client is not None else build, label=spec.label,
                       prebuilt=client)


def _scores_chat(task: Any) -> bool:
    """A log-likelihood task whose contexts are chat messages (probe_math, probe_general)."""
    return request_kind(task) == "loglikelihood" and bool(task.needs_chat)


def _leave_out_of_all(suites: tuple[str, ...], text: str, model: ModelSpec) -> tuple[str, ...]:
    """An OpenAI-compatible endpoint scores raw text only (/v1/completions with echo), so ``--suite all``
    leaves out the log-likelihood tasks with chat contexts, and says so; naming one is refused in the plan."""
    named = {p.strip() for p in text.split(",")}
    if model.kind != "openai" or "all" not in named:
        return suites
    from harness.tasks import task_class

    left_out = [s for s in suites if s not in named and _scores_chat(task_class(s))]
    if left_out:
        log.info("--suite all: %s left out (an OpenAI-compatible endpoint cannot score chat contexts; score them "
                 "with --model hf:PATH or vllm:PATH)", ", ".join(left_out))
    return tuple(s for s in suites if s not in left_out)


def _check_scorable(model: ModelSpec, tasks: list[Task]) -> None:
    chat = [t.name for t in tasks if _scores_chat(t)]
    if model.kind == "openai" and chat:
        raise UsageError(f"{', '.join(chat)} scores chat contexts, which an OpenAI-compatible endpoint cannot (its "
                         "completions API scores raw text only); score them with --model hf:PATH or vllm:PATH, or "
                         "leave them out of --suite (probe_code scores raw text and works here)")


def _check_embeddable(model: ModelSpec, tasks: list[Task]) -> None:
    """Hidden-state vectors (``request_kind = "embed"``) come from the HF engine only: refused up front elsewhere."""
    embed = [t.name for t in tasks if request_kind(t) == "embed"]
    if not embed:
        return
    from harness.adapters import resolve_kind

    kind = resolve_kind(model)
    if kind == "openai":
        raise UsageError(f"{', '.join(embed)} needs the model's hidden states, which an OpenAI-compatible endpoint "
                         "does not return; run it with --model hf:PATH (the same checkpoint, local)")
    if kind == "vllm":
        raise UsageError(f"{', '.join(embed)} needs a chosen layer's hidden states, which vLLM's generation engine "
                         "does not return (its pooling runner gives the last layer only, in another engine); run "
                         "it with --model hf:PATH")


def _judge_spec(cfg: RunConfig, tasks: list[Task]) -> ModelSpec | None:
    judged = [t.name for t in tasks if t.needs_judge]
    if not judged:
        return None
    if cfg.judge.spec is not None:
        return cfg.judge.spec
    if os.environ.get("OPENAI_API_KEY"):
        return ModelSpec(kind="openai", target="gpt-4")
    raise UsageError(f"{' and '.join(judged)} needs a judge and none is configured: pass --judge openai:gpt-4 with "
                     "OPENAI_API_KEY set, --judge openai:NAME --judge-base-url URL, or a local --judge hf:PATH")


def _read_chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--chat-template {path!r} cannot be read ({exc.strerror}); pass a Jinja template file") from None


def default_run_id(cfg: RunConfig) -> str:
    model = {**asdict(cfg.model), "args": {k: v for k, v in cfg.model.args.items() if k not in EXECUTION_ARGS},
             # Two endpoints serving the same model name are two models: the endpoint
             # (without credentials) is part of the id, never a shared directory.
             "base_url": endpoint_url(resolved_base_url(cfg.model)) if cfg.model.kind == "openai" else None}
    # Options declared identity=False are left out (sandbox workers; judge settings, since a new
    # judge re-judges in the same run directory, its judgments keyed by judge identity).
    from harness.core.options import identity
    from harness.tasks import options_classes

    opts = {"shared": identity(cfg.shared), **{name: identity(cfg.task_options.get(name) or cls())
                                               for name, cls in options_classes(cfg.suites).items()}}
    ident = {"model": model, "suites": cfg.suites, "opts": opts,
             "chat_template": cfg.chat_template, "meta": cfg.metadata}
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in (cfg.label or cfg.model.label))[:48]
    return f"{slug.lstrip('.') or 'run'}-{'+'.join(cfg.suites)}-{sha256_json(ident)[:8]}"


def _resume_or_fresh(rd: RunDir, cfg: RunConfig, model: LazyAdapter) -> None:
    if cfg.fresh:
        rd.clear()
        return
    if not (rd.path / "config.json").exists():
        return
    from harness.readout.report import check_run_format

    check_run_format(rd.path)
    previous = json.loads((rd.path / "config.json").read_text(encoding="utf-8"))
    before = ((previous.get("identity") or {}).get("model") or {}).get("endpoint")
    now = model.identity.get("endpoint")
    if before and now and before != now:
        raise UsageError(f"run directory {str(rd.path)!r} holds a run against {before}, not {now}; two endpoints "
                         "never share a run directory: pass another --run-id (or --fresh to replace that run)")
    log.info("resuming %s: journaled work is reused", rd.path)


def _config_record(cfg: RunConfig, run_dir: Path, model: LazyAdapter, tasks: list[Task],
                   judge_spec: ModelSpec | None, judge: LazyAdapter | None) -> dict[str, Any]:
    from harness.core.env import environment_record, redact_url

    previous_adapter = None
    try:
        previous_adapter = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("adapter")
    except (OSError, ValueError, AttributeError):
        pass
    return {
        "format": RUN_FORMAT,
        "harness_version": __version__,
        "run_id": run_dir.name,
        "label": cfg.label or cfg.metadata.get("label") or cfg.model.label,
        "model": {"spec": f"{cfg.model.kind}:{cfg.model.target}", "kind": cfg.model.kind,
                  "target": cfg.model.target, "args": redact(cfg.model.args),
                  "base_url": redact_url(cfg.model.base_url)},
        "adapter": previous_adapter or model.identity,  # replaced by the adapter's own description once loaded
        # What the journals are keyed on: `harness score` finds completions and judgments by these.
        "identity": {"model": model.identity, "judge": judge.identity if judge is not None else None},
        "judge": None if judge_spec is None else {"spec": f"{judge_spec.kind}:{judge_spec.target}",
                                                  "args": redact(judge_spec.args),
                                                  "base_url": redact_url(judge_spec.base_url)},
        "suites": list(cfg.suites),
        "task_options": options_record(cfg),
        "tasks": {t.name: {"version": t.version, **t.describe()} for t in tasks},
        "metadata": cfg.metadata,
        "seed": cfg.shared.seed,
        "started_at": _now(),
        "environment": environment_record(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
