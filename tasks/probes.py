"""Ability probes: how likely a checkpoint finds reference answers, per ability, item by item.

Generative benchmarks on a small model after a few training steps rarely
move; the log-likelihood of a reference answer does, continuously and on the
same items, so two checkpoints can be compared with paired intervals. Each
probe sends one ``LoglikelihoodRequest`` per item (lm-eval's
``loglikelihood(context, continuation)``: context and continuation tokenised
together and split at the boundary, one forward pass):

* ``probe_math``: packaged GSM8K test, the question as the user turn (rendered
  with the checkpoint's chat template, as ``harness.train`` renders a GSM8K
  example) -> the reference solution with its ``<<48/2=24>>`` calculator
  annotations removed (the text GSM8K's few-shot exemplars show).
* ``probe_code``: packaged HumanEval, the raw prompt (signature + docstring)
  -> the canonical solution. Completion-style: the solution is the text that
  continues the prompt verbatim, so no chat wrapper or markdown fence decides
  what is scored, and base and chat checkpoints are measured on the same tokens.
* ``probe_general``: any conversation file (``--probe-general-data PATH``;
  ShareGPT, messages or Alpaca records, read by ``harness.core.conversations``): the
  last assistant turn given the conversation before it.

Metrics (lm-eval's definitions, pooled over the probe's tokens or bytes):
``nll`` = total negative log-likelihood / total continuation tokens (nats per
token; the primary metric, lower is better), ``bits_per_byte`` = total NLL /
ln 2 / total UTF-8 bytes (comparable across tokenizers; lower is better) and
``greedy`` = share of items whose every continuation token was the argmax.
Each item keeps its own values (and its token and byte counts as weights) in
the samples file, so ``harness report`` shows paired differences (the paired
cluster bootstrap over items) and ``harness check`` gates on ``nll`` with an
allowed rise of ``default_max_drop`` nats per token.

Example: ``harness run --model smollm2-135m-instruct --suite probes --limit 100``
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.core.errors import UsageError
from harness.core.options import Options, SharedOptions, option
from harness.core.records import (
    Example,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    MetricSpec,
    Result,
)
from harness.core.stats import mean_stderr, weighted_mean_stderr

METRICS = (
    MetricSpec("nll", key="nll", kind="continuous", scale=1.0, primary=True, higher_is_better=False, weight="tokens"),
    MetricSpec("bits_per_byte", key="bpb", kind="continuous", scale=1.0, higher_is_better=False, weight="bytes"),
    MetricSpec("greedy", key="greedy", kind="binary", scale=100.0),
)


def score_item(ex: Example, res: LoglikelihoodResult) -> Result:
    """One item's values; a failed or empty scoring is an error, never a made-up number."""
    if res.error is not None:
        return Result(id=ex.id, error=f"scoring failed: {res.error}")
    if res.logprob_sum is None or not res.n_tokens or not res.n_bytes or not math.isfinite(res.logprob_sum):
        return Result(id=ex.id, error=f"scoring returned no usable numbers: {res.to_dict()}")
    nll = -res.logprob_sum
    return Result(id=ex.id, scores={"nll": nll / res.n_tokens, "tokens": float(res.n_tokens),
                                    "bpb": nll / math.log(2) / res.n_bytes, "bytes": float(res.n_bytes),
                                    "greedy": float(bool(res.is_greedy))},
                  extracted={"logprob_sum": res.logprob_sum})


def aggregate(results: Sequence[Result]) -> dict[str, float]:
    scored = [r for r in results if r.error is None]
    out: dict[str, float] = {"n": len(results), "scored": len(scored), "errors": len(results) - len(scored),
                             "tokens": sum(r.scores["tokens"] for r in scored),
                             "bytes": sum(r.scores["bytes"] for r in scored)}
    for m in METRICS:
        vals = [r.scores[m.key] for r in scored]
        if m.weight:
            mean, se = weighted_mean_stderr(vals, [r.scores[m.weight] for r in scored])
        else:
            mean, se = mean_stderr(vals)
        out[m.name], out[f"{m.name}_stderr"] = mean, se
    return out


def _sha256(rows: Any) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class NoOptions(Options):
    """The packaged probes take only the run's shared options (--limit)."""


class Probe:
    """What every probe shares: log-likelihood requests, the three metrics, their aggregation."""

    name = "probe"
    version = "1"
    turns = 1
    request_kind = "loglikelihood"  # the runner sends requests() through its log-likelihood pass
    Options: type[Options] = NoOptions
    needs_chat = True
    needs_judge = False
    needs_code_execution = False
    # nats per token the gate lets nll rise before it tests for a regression (~2% perplexity)
    default_max_drop = 0.02
    in_suite_all = True  # --suite all runs it (needs no file)
    metrics = METRICS

    def __init__(self, options: Options | None = None, shared: SharedOptions | None = None) -> None:
        self.options = options or self.Options()
        self.shared = shared or SharedOptions()
        self._data_sha256: str | None = None

    def load(self, limit: int | None = None) -> list[Example]:
        rows = self.rows()
        self._data_sha256 = _sha256(rows)
        rows = rows[:limit] if limit else rows
        return [Example(id=f"{self.name}/{i}", data=r) for i, r in enumerate(rows)]

    def rows(self) -> list[dict[str, Any]]:
        """Every item as ``{"context": str | [{role, content}], "continuation": str, ...}``."""
        raise NotImplementedError

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Any]]) -> list[LoglikelihoodRequest]:
        return [LoglikelihoodRequest(id=ex.id, context=_context(ex.data["context"]),
                                     continuation=ex.data["continuation"]) for ex in examples]

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[LoglikelihoodResult]],
              ctx: Any) -> list[Result]:
        return [score_item(ex, completions[ex.id][0]) for ex in examples]

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        return aggregate(results)

    def describe(self) -> dict[str, Any]:
        return {"request_kind": self.request_kind, "context": "chat" if self.needs_chat else "raw",
                "data_sha256": self._data_sha256}


def _context(ctx: str | list[dict[str, str]]) -> str | tuple[Message, ...]:
    return ctx if isinstance(ctx, str) else tuple(Message(m["role"], m["content"]) for m in ctx)  # type: ignore[arg-type]


class ProbeMath(Probe):
    """GSM8K test: log-likelihood of the reference solution given the question (chat)."""

    name = "probe_math"

    def rows(self) -> list[dict[str, Any]]:
        from harness.tasks.gsm8k import load_rows, strip_calculator

        return [{"context": [{"role": "user", "content": r["question"]}],
                 "continuation": strip_calculator(r["answer"])} for r in load_rows(None, "test")]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": "packaged:gsm8k/test", "continuation": "answer without <<...>>"}


class ProbeCode(Probe):
    """HumanEval: log-likelihood of the canonical solution given the raw prompt (completion-style)."""

    name = "probe_code"
    needs_chat = False

    def rows(self) -> list[dict[str, Any]]:
        from harness.tasks.humaneval import load_problems

        return [{"context": p["prompt"], "continuation": p["canonical_solution"], "task_id": p["task_id"]}
                for p in load_problems()]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": "packaged:humaneval"}


Format = Literal["auto", "sharegpt", "messages", "alpaca"]


@dataclass(frozen=True)
class GeneralOptions(Options):
    prefix = "probe-general"

    data: str | None = option(None, "conversation file for probe_general (ShareGPT, messages or Alpaca "
                              "json/jsonl/parquet); required by that task")
    format: Format = option("auto", "format of --probe-general-data (auto: from the first record's keys)")


class ProbeGeneral(Probe):
    """Any conversation file: log-likelihood of the last assistant turn given the turns before it."""

    name = "probe_general"
    Options = GeneralOptions
    in_suite_all = False  # it needs a file: --suite all,probe_general --probe-general-data PATH

    def rows(self) -> list[dict[str, Any]]:
        from harness.core.conversations import convert, read_records

        path = getattr(self.options, "data", None)
        if not path:
            raise UsageError("probe_general needs a conversation file: pass --probe-general-data PATH (in a study: "
                             "data = PATH under [eval.probe_general]), a ShareGPT, messages or Alpaca json/jsonl file")
        records = read_records(path)
        fmt = self.options.format if self.options.format != "auto" else detect_format(records, path)
        convs, _dropped = convert(records, fmt, "probe_general")
        rows = [row for row in (last_turn(c.messages, c.id) for c in convs) if row is not None]
        if not rows:
            raise UsageError(f"--probe-general-data {path!r} holds no conversation with an assistant turn to "
                             f"score (read as {fmt}); pass a file of chats that end in an assistant reply")
        return rows

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.options.data, "format": self.options.format}


def detect_format(records: Sequence[tuple[str, dict[str, Any]]], path: str) -> str:
    """The format the first record's keys name; a one-line error when they name none."""
    if not records:
        raise UsageError(f"--probe-general-data {path!r} is empty; pass a file with at least one conversation")
    where, first = records[0]
    keys = first.keys() if isinstance(first, dict) else ()
    for key, fmt in (("conversations", "sharegpt"), ("messages", "messages"), ("instruction", "alpaca")):
        if key in keys:
            return fmt
    raise UsageError(f"{where}: cannot tell the format from keys {sorted(keys)}; expected 'conversations' "
                     "(ShareGPT), 'messages' or 'instruction' (Alpaca), or pass --probe-general-format")


def last_turn(messages: Sequence[Message], conv_id: str) -> dict[str, Any] | None:
    """The last assistant turn as the continuation, everything before it as the chat context."""
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is None or last == 0:
        return None
    context = [{"role": m.role, "content": m.content} for m in messages[:last]]
    return {"context": context, "continuation": messages[last].content, "conversation": conv_id}
