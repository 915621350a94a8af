"""The score stage: journaled completions (and judgments) in, samples and summary out.

Scoring reads only files of the run directory: the generation journals
(looked up by the model identity recorded in ``config.json``), the judge
journals and the task's own journals (HumanEval's execution verdicts). No
model is loaded, so a scorer fix re-scores a finished run without
regenerating a single completion:

    harness score runs/smollm2-135m-instruct-gsm8k-1a2b3c4d
    harness score runs/... --replace      # write a summary that differs from the recorded one

``harness run`` calls the same ``score_run`` after its passes. Run on its own,
``score`` never silently changes a recorded result: when the new summary
differs from ``summary.json`` (a new scorer version, a fixed extraction) it
writes nothing and says what changed, unless ``--replace`` is given; then the
old summary is kept beside the new one as ``summary.replaced-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from harness import RUN_FORMAT, __version__
from harness.core.errors import UsageError
from harness.core.files import write_json_atomic, write_jsonl_atomic
from harness.core.journal import Journal
from harness.core.models import ModelSpec
from harness.core.records import Completion, Example, LoglikelihoodResult, Request, Result, Task, sha256_json
from harness.run.passes import JUDGMENT, LOGLIKELIHOOD, journaled, pass_keys, task_journal

log = logging.getLogger("harness")


class ScoreRun:
    """What a task may use while scoring (``records.ScoreContext``): journals, progress, judgments."""

    def __init__(self, run_dir: Path, judgments: Mapping[str, Completion] | None = None,
                 judge_spec: ModelSpec | None = None,
                 judge_scores: Mapping[str, LoglikelihoodResult] | None = None) -> None:
        self.run_dir = run_dir
        self.judgments: Mapping[str, Completion] = judgments or {}
        self.judge_scores: Mapping[str, LoglikelihoodResult] = judge_scores or {}
        self.judge_spec = judge_spec
        self._journals: list[Journal] = []

    def journal(self, name: str) -> Journal:
        j = Journal(self.run_dir / name)
        self._journals.append(j)
        return j

    def progress(self, desc: str, total: int) -> Any:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, dynamic_ncols=True)

    def log(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        for j in self._journals:
            j.close()


def collect_generations(task: Task, examples: Sequence[Example], run_dir: Path,
                        identity: dict[str, Any]) -> tuple[dict[str, list[Completion]], list[list[Request]]]:
    """Every turn's requests and journaled completions, rebuilt without an engine.

    A request with no journaled completion means the run did not finish its
    generation: a UsageError that says how to finish it.
    """
    completions: dict[str, list[Completion]] = {ex.id: [] for ex in examples}
    by_turn: list[list[Request]] = []
    path, spec = task_journal(task, run_dir)  # log-likelihood tasks: their results stand in for completions
    with Journal(path) as journal:
        for turn in range(task.turns):
            reqs = task.requests(examples, turn, completions)
            found = journaled(journal, reqs, pass_keys(identity, reqs), spec)
            missing = sum(c is None for c in found)
            if missing:
                what, stage = {"completion": ("completion", "generating"),
                               "embedding": ("vector", "embedding")}.get(
                    spec.field, ("log-likelihood", "scoring log-likelihoods"))
                raise UsageError(f"{run_dir}: {missing} of {len(reqs)} {task.name} requests have no journaled "
                                 f"{what} (the run did not finish {stage}); rerun `harness run` with the "
                                 "same options to finish it, then score")
            by_turn.append(reqs)
            for req, comp in zip(reqs, found, strict=True):
                completions[example_id(req.id)].append(comp)
    return completions, by_turn


def collect_judgments(task: Task, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
                      run_dir: Path, identity: dict[str, Any]) -> dict[str, Completion]:
    """Journaled judge completions by judge request id (absent ones are left out: the task reports them)."""
    reqs = task.judge_requests(examples, completions)
    if not reqs:  # judged by likelihood only: no text judge journal
        return {}
    with Journal(run_dir / f"{task.name}.judgments.jsonl") as journal:
        found = journaled(journal, reqs, pass_keys(identity, reqs), JUDGMENT)
    return {r.id: c for r, c in zip(reqs, found, strict=True) if c is not None}


def collect_judge_ratings(task: Task, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
                          run_dir: Path, identity: dict[str, Any]) -> dict[str, LoglikelihoodResult]:
    """Journaled likelihood-judging scores by rating request id (absent ones are left out: the task reports them)."""
    reqs = task.judge_rating_requests(examples, completions)
    if not reqs:
        return {}
    with Journal(run_dir / f"{task.name}.judge_ratings.jsonl") as journal:
        found = journaled(journal, reqs, pass_keys(identity, reqs), LOGLIKELIHOOD)
    return {r.id: res for r, res in zip(reqs, found, strict=True) if res is not None}


def score_run(run_dir: Path, tasks: Sequence[Task], examples: Mapping[str, list[Example]], config: dict[str, Any],
              *, replace: bool, keep_old: Literal["always", "on_new_version"] = "always") -> dict[str, Any]:
    """Score every task from the run's files; write samples, summary.json and report.md; return the summary.

    ``replace``: write a summary that differs from the recorded one (else a
    UsageError saying what changed). ``keep_old``: when replacing, keep the old
    one beside it always (``harness score --replace``), or only when a task's
    version changed (``harness run`` resuming its own unfinished work).
    """
    identity = config["identity"]
    judge_spec = judge_spec_of(config)
    summary: dict[str, Any] = {"run_id": run_dir.name, "harness_version": __version__, "format": RUN_FORMAT,
                               "label": config["label"], "tasks": {}}
    rows: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        t0 = time.monotonic()
        exs = examples[task.name]
        completions, by_turn = collect_generations(task, exs, run_dir, identity["model"])
        judgments, ratings = {}, {}
        if task.needs_judge and identity.get("judge"):
            task.use_judge(judge_spec)  # the judge mode follows the judge recorded, as at run time
            judgments = collect_judgments(task, exs, completions, run_dir, identity["judge"])
            ratings = collect_judge_ratings(task, exs, completions, run_dir, identity["judge"])
        ctx = ScoreRun(run_dir, judgments, judge_spec, ratings)
        try:
            results = task.score(exs, completions, ctx)
        finally:
            ctx.close()
        rows[task.name] = [sample_row(ex, by_turn, completions[ex.id], res)
                           for ex, res in zip(exs, results, strict=True)]
        summary["tasks"][task.name] = _task_summary(task, exs, results, config)
        errors = summary["tasks"][task.name]["errors"]
        log.info("score: %s %d items, %d errors (%.1f s)", task.name, len(results), errors, time.monotonic() - t0)
    _write(run_dir, summary, rows, replace, keep_old)
    return summary


def _task_summary(task: Task, examples: Sequence[Example], results: Sequence[Result],
                  config: dict[str, Any]) -> dict[str, Any]:
    entry = {"version": task.version, "n": len(results), "errors": sum(1 for r in results if r.error),
             "metrics": task.aggregate(results), "metric_specs": [m.to_dict() for m in task.metrics],
             "config": task.describe(), "item_ids_sha256": sha256_json(sorted(ex.id for ex in examples))}
    if task.needs_judge:
        entry["judge"] = (config.get("judge") or {}).get("spec")
    return entry


def _write(run_dir: Path, summary: dict[str, Any], rows: Mapping[str, list[dict[str, Any]]], replace: bool,
           keep_old: str) -> None:
    path = run_dir / "summary.json"
    tmp = run_dir / "summary.json.new"
    write_json_atomic(tmp, summary)
    if path.exists() and path.read_bytes() != tmp.read_bytes():
        if not replace:
            tmp.unlink()
            raise UsageError(f"re-scoring {run_dir} changes summary.json ({_changes(path, summary)}); nothing was "
                             "written: pass --replace to write it (the old one is kept as summary.replaced-*.json)")
        if keep_old == "always" or "version" in _changes(path, summary):
            kept = run_dir / f"summary.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
            path.replace(kept)
            log.info("score: the previous summary is kept as %s", kept.name)
    for name, task_rows in rows.items():
        write_jsonl_atomic(run_dir / f"{name}.samples.jsonl", task_rows)
    tmp.replace(path)
    from harness.readout.report import write_run_report
    print(write_run_report(run_dir))


def _changes(path: Path, new: dict[str, Any]) -> str:
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("tasks", {})
    except (OSError, ValueError, AttributeError):
        return "the recorded one is unreadable"
    parts = []
    for name, entry in new["tasks"].items():
        before = old.get(name) or {}
        if before.get("version") != entry["version"]:
            parts.append(f"{name} version {before.get('version')} -> {entry['version']}")
        elif before.get("metrics") != json.loads(json.dumps(entry["metrics"], default=str)):
            parts.append(f"{name} metrics differ")
    return ", ".join(parts) or "details differ"


def unscored_tasks(summary: Mapping[str, Any]) -> list[str]:
    """Tasks in which no item got a score (every request or judgment failed)."""
    return [name for name, t in summary["tasks"].items() if t["n"] - t["errors"] <= 0]


def judge_spec_of(config: Mapping[str, Any]) -> ModelSpec | None:
    """The judge as recorded, with its endpoint as resolved at run time (not today's environment)."""
    judge, ident = config.get("judge"), (config.get("identity") or {}).get("judge")
    if not judge:
        return None
    kind, _, target = judge["spec"].partition(":")
    base_url = ident.get("endpoint") if ident and kind == "openai" else judge.get("base_url")
    return ModelSpec(kind=kind, target=target, base_url=base_url)


def example_id(request_id: str) -> str:
    # Request ids are "<example id>" or "<example id>#t<turn>".
    return request_id.split("#t", 1)[0]


def sample_row(ex: Example, requests_by_turn: list[list[Request]], comps: list[Completion], res: Result) -> dict:
    reqs = [next(r for r in turn if example_id(r.id) == ex.id) for turn in requests_by_turn]
    return {
        "id": ex.id,
        "requests": [r.to_dict() for r in reqs],
        "completions": [c.to_dict() for c in comps],
        **{k: v for k, v in res.to_dict().items() if k != "id"},
    }


# -- `harness score RUN_DIR` --------------------------------------------------------------------------

def main_score(args: argparse.Namespace) -> int:
    from harness.run.rundir import open_run_dir

    run_dir = Path(args.run_dir)
    config = _read_config(run_dir)
    run_dir = run_dir.resolve()  # `harness score .` from inside the run directory works too
    with open_run_dir(run_dir.parent, run_dir.name):
        tasks, limit = _tasks_from_config(config)
        examples = {t.name: t.load(limit) for t in tasks}
        summary = score_run(run_dir, tasks, examples, config, replace=args.replace)
        config["tasks"] = {t.name: {"version": t.version, **t.describe()} for t in tasks}
        config["scored_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(run_dir / "config.json", config)
    return exit_code(run_dir, summary)


def exit_code(run_dir: Path, summary: Mapping[str, Any]) -> int:
    """1 when some task has no scored item (its work is kept), else 0; says so on the last line."""
    empty = unscored_tasks(summary)
    if not empty:
        return 0
    import sys
    print(f"harness: no item of {', '.join(empty)} was scored (every request failed; see the error column); "
          f"finished work is kept in {run_dir}", file=sys.stderr)
    return 1


def _read_config(run_dir: Path) -> dict[str, Any]:
    from harness.readout.report import check_run_format

    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "does not exist"
        raise UsageError(f"harness score: {str(run_dir)!r} {what}; pass a run directory made by `harness run`")
    check_run_format(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    if "identity" not in config or "shared" not in (config.get("task_options") or {}):
        raise UsageError(f"{run_dir} was written by an older harness that did not record the model identity "
                         "its completions are keyed on; rerun `harness run` with the same options once "
                         "(it regenerates), after which `harness score` works offline")
    return config


def _tasks_from_config(config: Mapping[str, Any]) -> tuple[list[Task], int | None]:
    """The run's tasks rebuilt from its recorded options (runner.options_record), and its item limit."""
    from harness.core.options import SharedOptions
    from harness.tasks import build_tasks, options_classes

    record = config["task_options"]
    suites = tuple(config["suites"])
    shared = SharedOptions(**record["shared"])
    options = {name: cls(**record.get(name, {})) for name, cls in options_classes(suites).items()}
    return build_tasks(suites, options, shared), shared.limit
