"""Core records and protocols shared by tasks, adapters and the runner.

Records are frozen dataclasses; dicts appear only at the file boundary
(``to_dict``/``from_dict``). The two protocols are deliberately small, after
lm-evaluation-harness' batch-first model API and simple-evals' sampler:

* an ``Adapter`` turns a whole pass of ``Request`` into ``Completion`` (same
  length, same order) and never sees a task;
* a ``Task`` loads examples, builds requests, scores completions and
  aggregates results, and never sees an adapter. A task that needs a judge
  declares ``judge_requests(examples, completions)``; the runner sends them
  through the same journaled pass as generation and hands the judge's
  completions back in ``ScoreContext.judgments``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Request:
    """One generation request. Exactly one of ``messages`` (chat, rendered with
    the checkpoint's own chat template) or ``prompt`` (raw text, e.g.
    HumanEval completion mode) is set."""

    id: str
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError(f"request {self.id}: set exactly one of messages or prompt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Request:
        d = dict(d)
        d["messages"] = tuple(Message(**m) for m in d.get("messages", ()))
        d["stop"] = tuple(d.get("stop", ()))
        return cls(**d)

    def key(self) -> str:
        """Content hash of everything in the request that determines its output."""
        payload = self.to_dict()
        payload.pop("id")
        return sha256_json(payload)


@dataclass(frozen=True)
class Completion:
    id: str
    texts: tuple[str, ...] = ()  # len == request.n when error is None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Completion:
        d = dict(d)
        d["texts"] = tuple(d.get("texts", ()))
        d["finish_reasons"] = tuple(d.get("finish_reasons", ()))
        return cls(**d)


@dataclass(frozen=True)
class Example:
    """A benchmark item. ``data`` holds the task's own fields (question,
    reference answer, tests...)."""

    id: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """Per-example outcome. ``scores`` holds metric name -> value for this item
    (e.g. ``{"strict": 1.0, "flexible": 1.0}``); an item that could not be
    scored has ``error`` set and no scores: it is counted, never given a
    made-up score."""

    id: str
    scores: Mapping[str, float] = field(default_factory=dict)
    extracted: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "scores": dict(self.scores), "extracted": dict(self.extracted),
                "error": self.error, "info": dict(self.info)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Result:
        return cls(id=d["id"], scores=d.get("scores", {}), extracted=d.get("extracted", {}),
                   error=d.get("error"), info=d.get("info", {}))


@dataclass(frozen=True)
class MetricSpec:
    """How the report treats one metric of a task.

    ``key`` names the per-item value in ``Result.scores`` that the metric is
    the mean of, so the report can build intervals and paired tests from the
    samples file alone. ``kind`` is ``binary`` (0/1 per item: Wilson interval,
    exact McNemar) or ``continuous`` (normal interval, paired bootstrap).
    ``scale`` maps the mean to the reported unit (100 for percent).

    ``unit`` names what one item is, the unit that was sampled (``question``,
    ``problem``): standard errors and paired tests treat units as independent
    and whatever nests inside one (turns, samples) as correlated. ``weight``,
    when set, names the per-item score holding how many rows the item's value
    averages (MT-Bench: judged turns), so the metric is the mean over rows
    pooled, with standard errors clustered on the item (harness.core.stats).
    """

    name: str
    key: str
    kind: Literal["binary", "continuous"] = "binary"
    scale: float = 100.0
    primary: bool = False
    higher_is_better: bool = True
    unit: str = "item"
    weight: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OnResult = Callable[[int, Completion], None]


class Adapter(Protocol):
    """A text generator. ``generate`` receives every request of a pass at once
    and returns one Completion per request, in order. Per-request failures are
    returned in ``Completion.error``; an exception means the engine itself is
    gone. ``on_result(index, completion)``, when given, is called as each
    completion is ready so the runner can persist it durably."""

    name: str

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """Generation-relevant identity: adapter kind, options, model fingerprint."""
        ...


class ScoreContext(Protocol):
    """What a task may use while scoring: durable journals, a progress bar, and
    the judge completions the runner's judge pass produced. Implemented by the
    runner (``harness.run.score.ScoreRun``); a task never drives an adapter."""

    run_dir: Any
    judgments: Mapping[str, Completion]  # judge request id -> the judge's completion (absent: none yet)
    judge_scores: Mapping[str, LoglikelihoodResult]  # rating request id -> the judge's score (likelihood judging)
    judge_spec: Any  # the judge's ModelSpec, or None

    def journal(self, name: str) -> Any: ...

    def progress(self, desc: str, total: int) -> Any: ...

    def log(self, message: str) -> None: ...


class Task(Protocol):
    """A benchmark. Besides the methods, a task declares what it needs from the run, so the
    runner never probes for it: its options dataclass (``Options``, a subclass of
    ``harness.core.options.Options``; constructed as ``cls(options, shared)``), whether
    its requests are chat (``needs_chat``: a chat template is required), whether it
    is graded by a judge model (``needs_judge``), whether it executes model-written
    code (``needs_code_execution``: refused without the run's opt-in, with the
    task's ``opt_in`` message), and the CI gate's default allowed drop of its
    primary metric in reported units (``default_max_drop``). Two declarations are
    optional, each read in one place with its default: ``request_kind`` (the engine
    pass, ``"generate"`` unless set; ``harness.run.passes.request_kind``) and
    ``in_suite_all`` (whether ``--suite all`` includes it, True unless set;
    ``harness.tasks.resolve_suites``).
    """

    name: str
    version: str
    turns: int  # number of generation passes (MT-Bench: 2)
    metrics: tuple[MetricSpec, ...]  # the first with primary=True is the task's headline number
    Options: type
    needs_chat: bool
    needs_judge: bool
    needs_code_execution: bool
    default_max_drop: float

    def load(self, limit: int | None = None) -> list[Example]: ...

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Completion]]) -> list[Request]: ...

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: ScoreContext) -> list[Result]: ...

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...


class JudgedTask(Task, Protocol):
    """A task graded by a judge model (``needs_judge = True``)."""

    def judge_requests(self, examples: Sequence[Example],
                       completions: Mapping[str, Sequence[Completion]]) -> list[Request]: ...

    def judgment_final(self, completion: Completion) -> bool:
        """A successful judge reply the task can use; others are asked again on a rerun."""
        ...

    def use_judge(self, spec: Any) -> None:
        """The judge's ModelSpec, given before any judge request is built (and again when
        ``harness score`` rebuilds the task); a UsageError if the task cannot use that judge."""
        ...

    def judge_rating_requests(self, examples: Sequence[Example],
                              completions: Mapping[str, Sequence[Completion]]) -> list[LoglikelihoodRequest]:
        """Likelihood judging: continuations the judge scores after its prompt (empty when the task
        is judged by text only); their results come back in ``ScoreContext.judge_scores``."""
        ...


# -- log-likelihood requests (lm-eval's ``loglikelihood``) ---------------------------------------

@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` given ``context``: chat messages (rendered with the
    checkpoint's chat template and its generation prompt, as training renders the
    prefix of an assistant turn) or a raw prompt string. The continuation is the
    text the model should produce next (an assistant reply, a reference solution)."""

    id: str
    context: tuple[Message, ...] | str
    continuation: str

    def __post_init__(self) -> None:
        if not self.continuation:
            raise ValueError(f"request {self.id}: the continuation is empty (nothing to score)")

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.context, str)

    def to_dict(self) -> dict[str, Any]:
        context = self.context if isinstance(self.context, str) else [asdict(m) for m in self.context]
        return {"id": self.id, "context": context, "continuation": self.continuation}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoglikelihoodRequest:
        ctx = d["context"]
        context = ctx if isinstance(ctx, str) else tuple(Message(**m) for m in ctx)
        return cls(id=d["id"], context=context, continuation=d["continuation"])

    def key(self) -> str:
        payload = self.to_dict()
        payload.pop("id")
        return sha256_json({"loglikelihood": payload})


@dataclass(frozen=True)
class LoglikelihoodResult:
    """``logprob_sum``: natural-log probability of the continuation's tokens given
    the context; ``n_tokens`` of them; ``n_bytes``: UTF-8 bytes of the continuation
    (bits per byte = -logprob_sum / ln 2 / n_bytes, comparable across tokenizers);
    ``is_greedy``: every continuation token was the model's argmax. A request
    that could not be scored has ``error`` set and no numbers."""

    id: str
    logprob_sum: float | None = None
    n_tokens: int | None = None
    n_bytes: int | None = None
    is_greedy: bool | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoglikelihoodResult:
        return cls(**{k: d.get(k) for k in ("id", "logprob_sum", "n_tokens", "n_bytes", "is_greedy", "error")})


OnScore = Callable[[int, LoglikelihoodResult], None]


class Scorer(Protocol):
    """An adapter that can score: ``loglikelihood`` takes every request of a pass
    at once and returns one result per request, in order (like ``generate``)."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      on_result: OnScore | None = None) -> list[LoglikelihoodResult]: ...


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- embedding requests (hidden-state vectors, for representation analysis) ----------------------

Pooling = Literal["mean", "last"]


@dataclass(frozen=True)
class EmbedRequest:
    """One vector for ``text`` (raw, tokenised as a raw prompt): the hidden state of ``layer``
    (HF's ``output_hidden_states`` index: 0 the embeddings, -1 the last layer) pooled over
    the first ``max_tokens`` tokens, by their mean or as the last token's state."""

    id: str
    text: str
    layer: int = -1
    pooling: Pooling = "mean"
    max_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.text:
            raise ValueError(f"request {self.id}: the text is empty (nothing to embed)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbedRequest:
        return cls(**{k: d[k] for k in ("id", "text", "layer", "pooling", "max_tokens") if k in d})

    def key(self) -> str:
        payload = self.to_dict()
        payload.pop("id")
        return sha256_json({"embed": payload})


@dataclass(frozen=True)
class EmbedResult:
    """``vector``: the pooled hidden state as little-endian float32 bytes (journaled as base64,
    so a resumed run reads back exactly the numbers a fresh one computed); ``n_tokens`` pooled,
    ``truncated`` when the text had more than the request's ``max_tokens``."""

    id: str
    vector: bytes | None = None
    n_tokens: int | None = None
    truncated: bool = False
    error: str | None = None

    @property
    def dim(self) -> int:
        return 0 if self.vector is None else len(self.vector) // 4

    def to_dict(self) -> dict[str, Any]:
        import base64
        vec = None if self.vector is None else base64.b64encode(self.vector).decode("ascii")
        return {"id": self.id, "vector_f32_b64": vec, "dim": self.dim, "n_tokens": self.n_tokens,
                "truncated": self.truncated, "error": self.error}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbedResult:
        import base64
        raw = d.get("vector_f32_b64")
        return cls(id=d["id"], vector=None if raw is None else base64.b64decode(raw), n_tokens=d.get("n_tokens"),
                   truncated=bool(d.get("truncated")), error=d.get("error"))


OnEmbed = Callable[[int, EmbedResult], None]
