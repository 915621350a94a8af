"""Run orchestration: plan -> generate -> score -> summarize -> report.

Each stage reads only what the previous one wrote under the run directory:

    runs/<run-id>/config.json                 resolved config, fingerprints, versions
    runs/<run-id>/<task>.generations.jsonl    journal: one checksummed record per request
    runs/<run-id>/<task>.<stage>.jsonl        task journals (execution verdicts, judgments)
    runs/<run-id>/<task>.samples.jsonl        one row per item: prompt, completions, scores, error
    runs/<run-id>/summary.json                aggregated metrics per task
    runs/<run-id>/report.md                   the standardized table for this run

The run id is derived from the configuration, so rerunning the same command
resumes: journaled completions are reused when their cache key (model
fingerprint + adapter options + task version + full request) matches.

Example: ``harness run --model smollm2-135m-instruct --suite gsm8k --limit 50``
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import RUN_FORMAT, __version__
from harness.core.errors import EngineError, UsageError
from harness.core.journal import Journal, write_json_atomic, write_jsonl_atomic
from harness.core.models import ModelSpec, check_model_target, parse_model_spec
from harness.core.records import Adapter, Completion, Example, Request, Result, Task, sha256_json

log = logging.getLogger("harness")


@dataclass(frozen=True)
class TaskOptions:
    """Options tasks read at construction; validated there, before any model loads."""

    limit: int | None = None
    seed: int = 1234
    max_tokens: int | None = None
    num_fewshot: int = 0
    gsm8k_data: str | None = None
    humaneval_mode: str = "auto"
    n: int = 1
    temperature: float | None = None
    allow_code_execution: bool = False
    exec_timeout: float = 10.0
    exec_workers: int | None = None
    judge_repeats: int = 1
    judge_max_tokens: int = 2048  # FastChat's judge setting


@dataclass(frozen=True)
class JudgeOptions:
    spec: ModelSpec | None = None
    concurrency: int = 16


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec
    suites: tuple[str, ...]
    out: Path
    task_options: TaskOptions
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
    from harness.tasks import resolve_suites

    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be a positive number of items, got {args.limit}")
    if args.n <= 0:
        raise UsageError(f"--n must be >= 1 samples per problem, got {args.n}")
    allow_exec = args.allow_code_execution or os.environ.get("HARNESS_ALLOW_CODE_EXECUTION", "") in ("1", "true", "yes")
    opts = TaskOptions(limit=args.limit, seed=args.seed, max_tokens=args.max_tokens, num_fewshot=args.num_fewshot,
                       gsm8k_data=args.gsm8k_data, humaneval_mode=args.humaneval_mode, n=args.n,
                       temperature=args.temperature, allow_code_execution=allow_exec,
                       exec_timeout=args.exec_timeout, exec_workers=args.exec_workers,
                       judge_repeats=args.judge_repeats, judge_max_tokens=args.judge_max_tokens)
    judge = JudgeOptions(
        spec=parse_model_spec(args.judge, args.judge_args, args.judge_base_url, flag="--judge") if args.judge else None,
        concurrency=args.judge_concurrency)
    return RunConfig(model=parse_model_spec(args.model, args.model_args, args.base_url),
                     suites=resolve_suites(args.suite), out=Path(args.out), task_options=opts, judge=judge,
                     run_id=args.run_id, fresh=args.fresh, chat_template=args.chat_template,
                     concurrency=args.concurrency, label=args.label, baseline=args.baseline,
                     fail_on_regression=args.fail_on_regression, max_drop=args.max_drop, alpha=args.alpha)


def main_run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_dir = run(cfg)
    if cfg.baseline:
        from harness.readout.gate import gate_runs
        try:
            code = gate_runs(run_dir, Path(cfg.baseline), cfg.max_drop, cfg.alpha)
        except UsageError as exc:
            if cfg.fail_on_regression:
                raise
            log.warning("comparison with --baseline skipped: %s", exc)
            return 0
        if cfg.fail_on_regression:
            return code
    return 0


def run(cfg: RunConfig) -> Path:
    """Run every task of the config; return the run directory."""
    from harness.adapters import build_adapter, preflight, preflight_judge
    from harness.tasks import build_task

    t0 = time.monotonic()
    check_model_target(cfg.model)
    preflight(cfg.model)
    if cfg.judge.spec:
        check_model_target(cfg.judge.spec, flag="--judge")
    chat_template = _read_chat_template(cfg.chat_template)
    tasks = [build_task(name, cfg.task_options) for name in cfg.suites]
    examples = {t.name: t.load(cfg.task_options.limit) for t in tasks}  # bad data fails here, before the model
    if cfg.baseline:
        from harness.readout.gate import preflight as preflight_baseline
        preflight_baseline(Path(cfg.baseline), {t.name: (t.version, [ex.id for ex in examples[t.name]])
                                                for t in tasks})
    run_dir = _prepare_run_dir(cfg)
    judge_spec = _judge_spec(cfg, tasks)
    if judge_spec is not None:
        preflight_judge(judge_spec)  # an unreachable judge fails now, not after hours of generation
    log.info("plan: %s | %s | run dir %s (%.1f s)", cfg.model.label,
             ", ".join(f"{t.name}={len(examples[t.name])}" for t in tasks), run_dir, time.monotonic() - t0)

    t1 = time.monotonic()
    adapter = build_adapter(cfg.model, chat_template=chat_template, concurrency=cfg.concurrency,
                            needs_chat=any(getattr(t, "needs_chat", True) for t in tasks))
    log.info("load: %s via %s (%.1f s)", cfg.model.label, adapter.name, time.monotonic() - t1)
    config = _config_record(cfg, run_dir, adapter, tasks, judge_spec)
    write_json_atomic(run_dir / "config.json", config)

    ctx = RunContext(run_dir=run_dir, judge_spec=judge_spec, judge_concurrency=cfg.judge.concurrency)
    summary: dict[str, Any] = {"run_id": run_dir.name, "harness_version": __version__, "format": RUN_FORMAT,
                               "label": config["label"], "tasks": {}}
    # Every generation pass first, then the model is released before scoring, so a
    # local judge (hf:/vllm:) never shares the GPU with the model under test.
    try:
        generated = {t.name: _generate_task(t, examples[t.name], adapter, run_dir) for t in tasks}
    finally:
        _close(adapter)
    try:
        for task in tasks:
            summary["tasks"][task.name] = _score_task(task, examples[task.name], *generated[task.name], ctx, run_dir)
    finally:
        ctx.close()
    config["finished_at"] = _now()
    config["wall_seconds"] = round(time.monotonic() - t0, 3)
    write_json_atomic(run_dir / "config.json", config)
    write_json_atomic(run_dir / "summary.json", summary)
    from harness.readout.report import write_run_report
    print(write_run_report(run_dir))
    log.info("done: %s (%.1f s)", run_dir, time.monotonic() - t0)
    return run_dir


def _generate_task(task: Task, examples: list[Example], adapter: Adapter,
                   run_dir: Path) -> tuple[dict[str, list[Completion]], list[list[Request]]]:
    t0 = time.monotonic()
    identity = {"adapter": cache_identity(adapter.describe()), "task": task.name, "task_version": task.version}
    completions: dict[str, list[Completion]] = {ex.id: [] for ex in examples}
    requests_by_turn: list[list[Request]] = []
    with Journal(run_dir / f"{task.name}.generations.jsonl") as journal:
        for turn in range(task.turns):
            reqs = task.requests(examples, turn, completions)
            requests_by_turn.append(reqs)
            done = generate_journaled(adapter, reqs, journal, identity, desc=f"{task.name} turn {turn + 1}"
                                      if task.turns > 1 else task.name)
            for req, comp in zip(reqs, done, strict=True):
                completions[_example_id(req.id)].append(comp)
    n_gen = sum(len(r) for r in requests_by_turn)
    log.info("generate: %s %d requests (%.1f s)", task.name, n_gen, time.monotonic() - t0)
    return completions, requests_by_turn


def _score_task(task: Task, examples: list[Example], completions: dict[str, list[Completion]],
                requests_by_turn: list[list[Request]], ctx: RunContext, run_dir: Path) -> dict:
    t1 = time.monotonic()
    results = task.score(examples, completions, ctx)
    metrics = task.aggregate(results)
    rows = [_sample_row(ex, requests_by_turn, completions[ex.id], res)
            for ex, res in zip(examples, results, strict=True)]
    write_jsonl_atomic(run_dir / f"{task.name}.samples.jsonl", rows)
    errors = sum(1 for r in results if r.error)
    log.info("score: %s %d items, %d errors (%.1f s)", task.name, len(results), errors, time.monotonic() - t1)
    return {"version": task.version, "n": len(results), "errors": errors, "metrics": metrics,
            "metric_specs": [m.to_dict() for m in task.metrics],
            "config": task.describe(), "item_ids_sha256": sha256_json(sorted(ex.id for ex in examples))}


# Fields of an adapter's description that do not change what it generates:
# where the checkpoint lives (its fingerprint covers the content) and how the
# work is spread (tensor/data parallel sizes, batch size, concurrency).
VOLATILE_FIELDS = frozenset({"target", "tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size",
                             "batch_size", "concurrency", "gpu_memory_utilization", "distributed_executor_backend",
                             "base_url"})


def cache_identity(description: dict[str, Any]) -> dict[str, Any]:
    """What a cached completion must match: everything that determines the output."""
    if not description.get("fingerprint"):
        return description  # no content hash (e.g. an API model): keep the name and endpoint
    return {k: (cache_identity(v) if isinstance(v, dict) else v) for k, v in description.items()
            if k not in VOLATILE_FIELDS}


def _example_id(request_id: str) -> str:
    # Request ids are "<example id>" or "<example id>#t<turn>".
    return request_id.split("#t", 1)[0]


def generate_journaled(adapter: Adapter, requests: Sequence[Request], journal: Journal,
                       identity: dict[str, Any], desc: str) -> list[Completion]:
    """Generate what the journal lacks, appending each completion as it lands.

    A journaled completion is reused only if its key matches: the key hashes
    the adapter identity (model fingerprint, generation options), the task
    version and the full request (messages, sampling parameters, seed).
    Failed completions are not reused: a rerun retries them.
    """
    from tqdm import tqdm

    id_hash = sha256_json(identity)
    keys = [sha256_json([id_hash, r.key()]) for r in requests]
    todo = [i for i, k in enumerate(keys) if not _reusable(journal.get(k))]
    bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=desc, unit="req", dynamic_ncols=True)
    written: set[int] = set()

    def on_result(j: int, comp: Completion) -> None:
        if j in written:
            return
        written.add(j)
        i = todo[j]
        journal.append(keys[i], {"request_id": requests[i].id, "completion": comp.to_dict()})
        bar.update(1)

    try:
        if todo:
            out = adapter.generate([requests[i] for i in todo], on_result=on_result)
            if len(out) != len(todo):
                raise EngineError(f"adapter {adapter.name} returned {len(out)} completions for {len(todo)} requests")
            for j, comp in enumerate(out):
                on_result(j, comp)  # for adapters that do not stream results through the callback
    except (EngineError, UsageError):
        raise
    except Exception as exc:  # the engine itself died (OOM, server gone): keep what finished
        raise EngineError(f"{adapter.name} failed during {desc}: {type(exc).__name__}: {exc}") from exc
    finally:
        journal.sync()
        bar.close()
    result = []
    for r, k in zip(requests, keys, strict=True):
        rec = journal.get(k)
        comp = Completion.from_dict(rec["completion"]) if rec else Completion(id=r.id, error="no completion")
        result.append(Completion(**{**asdict(comp), "id": r.id}) if comp.id != r.id else comp)
    return result


def _reusable(rec: dict[str, Any] | None) -> bool:
    return rec is not None and rec["completion"].get("error") is None


def _sample_row(ex: Example, requests_by_turn: list[list[Request]], comps: list[Completion], res: Result) -> dict:
    reqs = [next(r for r in turn if _example_id(r.id) == ex.id) for turn in requests_by_turn]
    return {
        "id": ex.id,
        "requests": [r.to_dict() for r in reqs],
        "completions": [c.to_dict() for c in comps],
        **{k: v for k, v in res.to_dict().items() if k != "id"},
    }


class RunContext:
    """What a task may use while scoring (see records.ScoreContext)."""

    def __init__(self, run_dir: Path, judge_spec: ModelSpec | None, judge_concurrency: int) -> None:
        self.run_dir = run_dir
        self._judge_spec = judge_spec
        self._judge_concurrency = judge_concurrency
        self._judge: Adapter | None = None
        self._journals: list[Journal] = []

    def journal(self, name: str) -> Journal:
        j = Journal(self.run_dir / name)
        self._journals.append(j)
        return j

    def progress(self, desc: str, total: int) -> Any:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, dynamic_ncols=True)

    def judge(self) -> Adapter:
        if self._judge is None:
            if self._judge_spec is None:
                raise UsageError("this task needs a judge: pass --judge openai:gpt-4 (with OPENAI_API_KEY), "
                                 "--judge openai:NAME --judge-base-url URL, or --judge hf:PATH")
            from harness.adapters import build_adapter
            self._judge = build_adapter(self._judge_spec, concurrency=self._judge_concurrency, needs_chat=True,
                                        role="judge")
        return self._judge

    @property
    def judge_spec(self) -> ModelSpec | None:
        return self._judge_spec

    def log(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        for j in self._journals:
            j.close()
        if self._judge is not None:
            _close(self._judge)


def _close(adapter: Any) -> None:
    close = getattr(adapter, "close", None)
    if callable(close):
        close()


def _judge_spec(cfg: RunConfig, tasks: list[Task]) -> ModelSpec | None:
    if not any(getattr(t, "needs_judge", False) for t in tasks):
        return None
    if cfg.judge.spec is not None:
        return cfg.judge.spec
    if os.environ.get("OPENAI_API_KEY"):
        return ModelSpec(kind="openai", target="gpt-4")
    raise UsageError("mt_bench needs a judge and none is configured: pass --judge openai:gpt-4 with "
                     "OPENAI_API_KEY set, --judge openai:NAME --judge-base-url URL, or a local --judge hf:PATH")


def _read_chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--chat-template {path!r} cannot be read ({exc.strerror}); pass a Jinja template file") from None


# --model-args that change how a run is executed, not what it computes: changing
# them resumes the same run directory.
EXECUTION_ARGS = VOLATILE_FIELDS | {"timeout", "max_retries", "backoff", "max_backoff", "api_key_env", "check_model",
                                    "chunk_size"}


def default_run_id(cfg: RunConfig) -> str:
    model = {**asdict(cfg.model), "args": {k: v for k, v in cfg.model.args.items() if k not in EXECUTION_ARGS},
             "base_url": None}
    # Judge settings are left out: a new judge re-judges in the same run directory
    # (judgments are keyed by judge identity) and reuses every generation.
    opts = {k: v for k, v in asdict(cfg.task_options).items() if not k.startswith("judge_")}
    ident = {"model": model, "suites": cfg.suites, "opts": opts,
             "chat_template": cfg.chat_template, "meta": cfg.metadata}
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in (cfg.label or cfg.model.label))[:48]
    return f"{slug}-{'+'.join(cfg.suites)}-{sha256_json(ident)[:8]}"


def _prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = cfg.out / (cfg.run_id or default_run_id(cfg))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {str(cfg.out)!r} is not writable ({exc.strerror}); choose another directory") from None
    existing = run_dir / "config.json"
    if existing.exists() and not cfg.fresh:
        from harness.readout.report import check_run_format
        check_run_format(run_dir)
        log.info("resuming %s: journaled work is reused", run_dir)
    if cfg.fresh:
        for p in run_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return run_dir


def _config_record(cfg: RunConfig, run_dir: Path, adapter: Adapter, tasks: list[Task],
                   judge_spec: ModelSpec | None) -> dict[str, Any]:
    from harness.core.env import environment_record, redact, redact_url

    desc = adapter.describe()
    return {
        "format": RUN_FORMAT,
        "harness_version": __version__,
        "run_id": run_dir.name,
        "label": cfg.label or cfg.metadata.get("label") or cfg.model.label,
        "model": {"spec": f"{cfg.model.kind}:{cfg.model.target}", "kind": cfg.model.kind,
                  "target": cfg.model.target, "args": redact(cfg.model.args),
                  "base_url": redact_url(cfg.model.base_url)},
        "adapter": redact(desc),
        "judge": None if judge_spec is None else {"spec": f"{judge_spec.kind}:{judge_spec.target}",
                                                  "args": redact(judge_spec.args),
                                                  "base_url": redact_url(judge_spec.base_url)},
        "suites": list(cfg.suites),
        "task_options": asdict(cfg.task_options),
        "tasks": {t.name: {"version": t.version, **t.describe()} for t in tasks},
        "metadata": cfg.metadata,
        "seed": cfg.task_options.seed,
        "started_at": _now(),
        "environment": environment_record(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
