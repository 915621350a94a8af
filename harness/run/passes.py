"""Journaled passes: send a batch of requests to an engine, durably, resumably.

One helper serves every model pass the runner owns: generation, the judge
pass, and any later request kind (log-likelihood) whose records have ``id``,
``key()`` and ``to_dict()`` and whose results have ``error``, ``to_dict()`` and
a ``from_dict`` decoder. A result is journaled the moment it lands, so a kill
loses only what was in flight.

Keys. A journaled result is reused only when its key matches:
``sha256(identity, request.key(), occurrence)``. ``identity`` is what
determines the engine's output (model fingerprint, chat template, generation
options; see ``harness.core.models.output_identity``); ``request.key()`` is
the full request without its id, so the task's name and version never enter
the key and a scorer fix regenerates nothing; ``occurrence`` numbers identical
requests within one pass, so R repeats of one judge prompt are R draws.
Failed results are journaled too (they are reported) but a rerun retries them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from harness.core.errors import EngineError, UsageError
from harness.core.journal import Journal
from harness.core.records import Completion, EmbedResult, Example, LoglikelihoodResult, Task, sha256_json

log = logging.getLogger("harness")


class Keyed(Protocol):
    id: str

    def key(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class Outcome(Protocol):
    id: str
    error: str | None

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Keyed)
# engine call: (requests, on_result) -> results in request order
Call = Callable[[list[R], Callable[[int, Any], None]], list[Any]]


@dataclass(frozen=True)
class PassSpec:
    """How one kind of pass reads and writes its journal records."""

    field: str  # record field holding the result ("completion", "loglikelihood", ...)
    decode: Callable[[dict[str, Any]], Any]  # Completion.from_dict, ...
    missing: Callable[[str], Any]  # a result for a request the engine never answered


def pass_keys(identity: dict[str, Any], requests: Sequence[Keyed]) -> list[str]:
    """Journal keys of a pass (see the module docstring)."""
    id_hash = sha256_json(identity)
    seen: dict[str, int] = {}
    keys = []
    for r in requests:
        rk = r.key()
        occurrence = seen.get(rk, 0)
        seen[rk] = occurrence + 1
        keys.append(sha256_json([id_hash, rk, occurrence]))
    return keys


def journaled(journal: Journal, requests: Sequence[Keyed], keys: Sequence[str], spec: PassSpec) -> list[Any | None]:
    """The journaled result of each request (id set to the request's), or None where there is none."""
    out = []
    for r, k in zip(requests, keys, strict=True):
        rec = journal.get(k)
        if rec is None or spec.field not in rec:
            out.append(None)
            continue
        res = spec.decode(rec[spec.field])
        out.append(res if res.id == r.id else replace(res, id=r.id))
    return out


Final = Callable[[Any], bool]  # is a successful result final, or asked again on a rerun?


def pending(journal: Journal, requests: Sequence[Keyed], identity: dict[str, Any], spec: PassSpec,
            final: Final | None = None) -> int:
    """How many requests a pass would send to the engine (0: the engine need not even be loaded)."""
    keys = pass_keys(identity, requests)
    return sum(not _reusable(journal.get(k), spec, final) for k in keys)


def run_pass(call: Callable[[], Call], requests: Sequence[R], journal: Journal, identity: dict[str, Any],
             spec: PassSpec, desc: str, engine: str, final: Final | None = None) -> list[Any]:
    """Send what the journal lacks through ``call()`` (built only if needed); return every result.

    ``call`` is a factory so an engine is loaded only when a request is
    missing. A journaled result is reused unless it failed or ``final`` says
    it is not usable (an unparsable judgment is asked again on a rerun). An
    engine that dies mid-pass raises ``EngineError`` with every finished
    result already journaled.
    """
    from tqdm import tqdm

    keys = pass_keys(identity, requests)
    todo = [i for i, k in enumerate(keys) if not _reusable(journal.get(k), spec, final)]
    if todo:
        bar = tqdm(total=len(requests), initial=len(requests) - len(todo), desc=desc, unit="req", dynamic_ncols=True)
        try:
            _send(call, requests, keys, todo, journal, spec, bar, desc, engine)
        finally:
            journal.sync()
            bar.close()
    found = journaled(journal, requests, keys, spec)
    return [res if res is not None else spec.missing(r.id) for r, res in zip(requests, found, strict=True)]


def _send(call: Callable[[], Call], requests: Sequence[R], keys: list[str], todo: list[int], journal: Journal,
          spec: PassSpec, bar: Any, desc: str, engine: str) -> None:
    written: set[int] = set()

    def on_result(j: int, res: Any) -> None:
        if j in written:
            return
        written.add(j)
        i = todo[j]
        journal.append(keys[i], {"request_id": requests[i].id, spec.field: res.to_dict()})
        bar.update(1)

    fn = call()
    try:
        out = fn([requests[i] for i in todo], on_result)
        if len(out) != len(todo):
            raise EngineError(f"{engine} returned {len(out)} results for {len(todo)} requests during {desc}")
        for j, res in enumerate(out):
            on_result(j, res)  # for engines that do not stream results through the callback
    except (EngineError, UsageError):
        raise
    except Exception as exc:  # the engine itself died (OOM, server gone): keep what finished
        from harness.core.env import scrub
        raise EngineError(f"{engine} failed during {desc}: {type(exc).__name__}: {scrub(str(exc))}") from exc


def _reusable(rec: dict[str, Any] | None, spec: PassSpec, final: Final | None) -> bool:
    if rec is None or spec.field not in rec or rec[spec.field].get("error") is not None:
        return False
    return final is None or final(spec.decode(rec[spec.field]))


def _no_completion(request_id: str) -> Completion:
    return Completion(id=request_id, error="no completion")


def _no_score(request_id: str) -> LoglikelihoodResult:
    return LoglikelihoodResult(id=request_id, error="no result")


GENERATION = PassSpec(field="completion", decode=Completion.from_dict, missing=_no_completion)
JUDGMENT = GENERATION  # a judge is just another generator; its records have the same shape
# ``run_pass(lambda: adapter.loglikelihood, requests, journal, identity, LOGLIKELIHOOD, ...)``
LOGLIKELIHOOD = PassSpec(field="loglikelihood", decode=LoglikelihoodResult.from_dict, missing=_no_score)


def _no_vector(request_id: str) -> EmbedResult:
    return EmbedResult(id=request_id, error="no vector")


# ``adapter.embed``: one pooled hidden-state vector per text (tasks/representations.py)
EMBEDDING = PassSpec(field="embedding", decode=EmbedResult.from_dict, missing=_no_vector)

# The pass behind each request kind a task may declare (``request_kind``; tasks that declare none
# generate): the journal's file suffix (``<task>.<suffix>.jsonl``) and the record spec.
PASSES: dict[str, tuple[str, PassSpec]] = {"generate": ("generations", GENERATION),
                                           "loglikelihood": ("loglikelihood", LOGLIKELIHOOD),
                                           "embed": ("embeddings", EMBEDDING)}


def request_kind(task: Task) -> str:
    kind = getattr(task, "request_kind", "generate")
    if kind not in PASSES:
        raise ValueError(f"task {task.name} declares request_kind {kind!r}; known: {', '.join(PASSES)}")
    return kind


def task_journal(task: Task, run_dir: Path) -> tuple[Path, PassSpec]:
    """Where a task's model pass is journaled, and how its records read."""
    suffix, spec = PASSES[request_kind(task)]
    return run_dir / f"{task.name}.{suffix}.jsonl", spec


class LazyAdapter:
    """An adapter known by its output identity, built only when a pass has work for it."""

    def __init__(self, identity: dict[str, Any], build: Callable[[], Any], label: str, prebuilt: Any = None) -> None:
        self.identity = identity
        self.label = label
        self._build = build
        self._adapter: Any = None
        self._prebuilt = prebuilt  # a client built at preflight (no weights): closed even if never used

    @property
    def loaded(self) -> bool:
        return self._adapter is not None

    def get(self) -> Any:
        if self._adapter is None:
            t0 = time.monotonic()
            self._adapter = self._build()
            log.info("load: %s via %s (%.1f s)", self.label, self._adapter.name, time.monotonic() - t0)
        return self._adapter

    def generate_call(self) -> Call:
        return self.get().generate

    def loglikelihood_call(self) -> Call:
        return self.get().loglikelihood

    def call_for(self, kind: str) -> Callable[[], Call]:
        """The engine entry point of a request kind (``PASSES``), as a factory for ``run_pass``."""
        if kind == "embed":
            return lambda: self.get().embed
        return self.loglikelihood_call if kind == "loglikelihood" else self.generate_call

    def describe(self) -> dict[str, Any]:
        return self._adapter.describe() if self._adapter is not None else self.identity

    def close(self) -> None:
        for adapter in {id(a): a for a in (self._adapter, self._prebuilt) if a is not None}.values():
            close = getattr(adapter, "close", None)
            if callable(close):
                close()
        self._adapter = self._prebuilt = None


def generate_task(task: Task, examples: Sequence[Example], model: LazyAdapter,
                  run_dir: Path) -> dict[str, list[Completion]]:
    """Every turn of a task's model pass (generation, or scoring for a task whose ``request_kind`` is
    "loglikelihood") through the journaled pass; the model loads only if work is missing."""
    t0 = time.monotonic()
    kind = request_kind(task)
    path, spec = task_journal(task, run_dir)
    completions: dict[str, list[Any]] = {ex.id: [] for ex in examples}
    sent = 0
    with Journal(path) as journal:
        for turn in range(task.turns):
            reqs = task.requests(examples, turn, completions)
            sent += pending(journal, reqs, model.identity, spec)
            desc = f"{task.name} turn {turn + 1}" if task.turns > 1 else task.name
            done = run_pass(model.call_for(kind), reqs, journal, model.identity, spec, desc, model.label)
            for req, comp in zip(reqs, done, strict=True):
                completions[req.id.split("#t", 1)[0]].append(comp)
    n = sum(len(c) for c in completions.values())
    log.info("%s: %s %d requests, %d sent (%.1f s)", kind, task.name, n, sent, time.monotonic() - t0)
    return completions


def judge_task(task: Task, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
               judge: LazyAdapter, run_dir: Path) -> dict[str, Completion]:
    """The task's judge requests (a pure function of its completions) through the journaled pass."""
    t0 = time.monotonic()
    reqs = task.judge_requests(examples, completions)
    if not reqs:  # judged by likelihood only (judge_ratings_task), or nothing was generated
        return {}
    final = task.judgment_final
    with Journal(run_dir / f"{task.name}.judgments.jsonl") as journal:
        todo = pending(journal, reqs, judge.identity, JUDGMENT, final)
        log.info("judge: %s | %d judgments, %d already journaled, %d to run", judge.label, len(reqs),
                 len(reqs) - todo, todo)
        done = run_pass(judge.generate_call, reqs, journal, judge.identity, JUDGMENT, f"{task.name} judge",
                        f"judge {judge.label}", final)
    log.info("judge: %s %d judgments (%.1f s)", task.name, len(reqs), time.monotonic() - t0)
    return {r.id: c for r, c in zip(reqs, done, strict=True)}


def judge_ratings_task(task: Task, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
                       judge: LazyAdapter, run_dir: Path) -> dict[str, LoglikelihoodResult]:
    """Likelihood judging: the task's rating continuations (``judge_rating_requests``, a pure function
    of its completions) scored by the judge through the journaled log-likelihood pass."""
    reqs = task.judge_rating_requests(examples, completions)
    if not reqs:  # judged by text only
        return {}
    t0 = time.monotonic()
    with Journal(run_dir / f"{task.name}.judge_ratings.jsonl") as journal:
        todo = pending(journal, reqs, judge.identity, LOGLIKELIHOOD)
        log.info("judge: %s | %d rating continuations, %d already journaled, %d to score", judge.label, len(reqs),
                 len(reqs) - todo, todo)
        done = run_pass(judge.loglikelihood_call, reqs, journal, judge.identity, LOGLIKELIHOOD,
                        f"{task.name} judge ratings", f"judge {judge.label}")
    log.info("judge: %s %d rating continuations scored (%.1f s)", task.name, len(reqs), time.monotonic() - t0)
    return {r.id: res for r, res in zip(reqs, done, strict=True)}
