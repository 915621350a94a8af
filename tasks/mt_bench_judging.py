"""MT-Bench's judging: parsing a text judgment, likelihood ratings, and the two rating families.

Text judging follows FastChat ``llm_judge`` (``gen_judgment.py --mode single``):
the rating is the first ``[[N]]`` of the judge's reply (fallback ``[N]``),
and anything else is an error that is counted, never a -1 dropped later.

Likelihood judging (``--judge-mode likelihood``; G-Eval, Liu et al. 2023)
reads the judge's log-probability of each of ``Rating: [[1]]`` ..
``Rating: [[10]]`` after the same judge prompt, normalises over the ten and
takes the expectation. Each mode's ratings form a *family* of metrics (text:
``score``, ``turn1`` ...; likelihood: ``likelihood_score`` ...), aggregated
apart so the two are never pooled in one mean (docs/mt_bench.md).

Example: ``harness run --model smollm2-135m-instruct --suite mt_bench --judge hf:smollm2-135m-instruct --limit 3``
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from harness.core.errors import UsageError
from harness.core.records import (
    Completion,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    MetricSpec,
    Request,
    Result,
)
from harness.core.stats import mean_stderr, weighted_mean_stderr

JUDGE_TEMPERATURE = 0.0  # run_judge_single: temperature=0, max_tokens=2048
RATING_RE = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # common.py one_score_pattern
RATING_BACKUP_RE = re.compile(r"\[(\d+\.?\d*)\]")  # one_score_pattern_backup
GPT4_JUDGES = ("gpt-4", "gpt-4-0613")  # the judge of the published MT-Bench numbers
OPENAI_API_URL = "https://api.openai.com/v1"
# Likelihood judging scores the ten answers the prompt asks for, "Rating: [[5]]" being its own example,
# so the shared prefix "Rating: [[" cancels in the normalisation and the ratings differ only in "k]]".
# The closing brackets make the ten events disjoint ("[[1" is a prefix of "[[10", "[[1]]" is not).
RATINGS = tuple(range(1, 11))
RATING_CONTINUATION = "Rating: [[{k}]]"
JudgeMode = Literal["auto", "likelihood", "text", "both"]
LIKELIHOOD = "likelihood_"  # the prefix of every likelihood metric: never pooled with text ratings


# -- judging ----------------------------------------------------------------------------------------

def parse_rating(text: str) -> float | None:
    """The first ``[[N]]`` in a judgment, else the first ``[N]`` (FastChat's two patterns); None if absent."""
    match = RATING_RE.search(text) or RATING_BACKUP_RE.search(text)
    return float(match.group(1)) if match else None


def judge_outcome(comp: Completion) -> dict[str, Any]:
    """A judge completion as a journal record: a rating in 1-10, or an error saying why not."""
    if comp.error is not None:
        return {"rating": None, "judgment": None, "error": f"judge call failed: {comp.error}"}
    text = comp.texts[0] if comp.texts else ""
    rating = parse_rating(text)
    if rating is None:
        return {"rating": None, "judgment": text, "error": "unparsable judgment: no [[rating]] in the reply"}
    if not 1.0 <= rating <= 10.0:
        return {"rating": None, "judgment": text, "error": f"rating {rating:g} is outside the 1-10 scale"}
    return {"rating": rating, "judgment": text, "error": None}


def likelihood_outcome(results: Sequence[LoglikelihoodResult | None]) -> dict[str, Any]:
    """Ten scored continuations (ratings 1..10, in order; None: not scored) as a record: the
    normalised distribution and its expectation as the rating, or an error saying why there is none."""
    failed = next((r.error for r in results if r is not None and r.error is not None), None)
    if failed is not None or len(results) != len(RATINGS) or any(r is None for r in results):
        why = f"judge scoring failed: {failed}" if failed else "no likelihood judgment"
        return {"rating": None, "distribution": None, "logprobs": None, "error": why}
    logprobs = [float(r.logprob_sum) for r in results if r is not None]
    top = max(logprobs)
    if not math.isfinite(top):
        return {"rating": None, "distribution": None, "logprobs": logprobs,
                "error": "judge scoring gave no finite log-probability for any rating"}
    weights = [math.exp(lp - top) for lp in logprobs]  # shifted by the max: no underflow to 0/0
    total = sum(weights)
    distribution = [w / total for w in weights]
    rating = sum(k * p for k, p in zip(RATINGS, distribution, strict=True))
    return {"rating": rating, "distribution": distribution, "logprobs": logprobs, "error": None}


def resolve_judge_mode(mode: str, spec: Any) -> str:
    """``auto`` -> likelihood for a local judge (hf:, vllm:, an embedded alias), text for an API judge.

    An API judge is never scored by likelihood: an OpenAI-compatible endpoint scores raw text only
    (``/completions`` with echo), and the judge prompt is a chat whose template only the server knows."""
    local = spec is not None and spec.kind != "openai"
    if mode == "auto":
        return "likelihood" if local else "text"
    if mode != "text" and spec is not None and not local:
        raise UsageError(f"--judge-mode {mode} needs a local judge (hf:PATH or vllm:PATH): {spec.kind}:{spec.target} "
                         "is an API endpoint, which cannot score a chat prompt's continuations; use --judge-mode "
                         "text (its default)")
    return mode


def is_gpt4_judge(spec: Any) -> bool:
    """Only GPT-4 on OpenAI's own endpoint gives scores comparable to published MT-Bench numbers."""
    if spec is None or spec.kind != "openai" or spec.target not in GPT4_JUDGES:
        return False
    url = (spec.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_URL).rstrip("/")
    return url == OPENAI_API_URL


@dataclass(frozen=True)
class JudgeLabel:
    spec: str | None  # "kind:target" of the judge, as recorded
    comparable: bool  # GPT-4 on OpenAI's endpoint: comparable to published MT-Bench numbers


@dataclass(frozen=True)
class JudgeJob:
    """One answer turn to judge: the judge prompt it is rendered into."""

    example_id: str
    turn: int  # 1 or 2
    prompt: str  # versioned prompt name
    messages: tuple[Message, ...]

    @property
    def base_id(self) -> str:
        return f"{self.example_id}#judge-t{self.turn}"

    def text_request(self, repeat: int, max_tokens: int) -> Request:
        return Request(id=f"{self.base_id}-r{repeat}", messages=self.messages, max_tokens=max_tokens,
                       temperature=JUDGE_TEMPERATURE)

    def rating_requests(self) -> list[LoglikelihoodRequest]:
        """The ten continuations whose probabilities after the judge prompt give the likelihood rating."""
        return [LoglikelihoodRequest(id=f"{self.base_id}-p{k}", context=self.messages,
                                     continuation=RATING_CONTINUATION.format(k=k)) for k in RATINGS]


def metric_specs(prefix: str, primary: bool) -> tuple[MetricSpec, ...]:
    """One family of ratings (parsed text: no prefix; likelihood: ``likelihood_``). The headline is
    FastChat's show_result average: every valid judgment row, turns pooled. An item (question)
    carries the mean of its judged turns and their count, so the report pools them with standard
    errors clustered on the question. ``question_mean`` weighs each question once."""
    p = prefix
    return (
        MetricSpec(f"{p}score", key=f"{p}score", kind="continuous", scale=1.0, primary=primary, unit="question",
                   weight=f"{p}score_turns"),
        MetricSpec(f"{p}turn1", key=f"{p}turn1", kind="continuous", scale=1.0, unit="question"),
        MetricSpec(f"{p}turn2", key=f"{p}turn2", kind="continuous", scale=1.0, unit="question"),
        MetricSpec(f"{p}question_mean", key=f"{p}score", kind="continuous", scale=1.0, unit="question"),
    )


# The families each judge mode reports, the headline's first: with both, the likelihood rating leads
# (it exists for every judged turn; a small judge's text rating often does not).
FAMILIES = {"text": ("",), "likelihood": (LIKELIHOOD,), "both": (LIKELIHOOD, "")}


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# -- aggregation of one family ---------------------------------------------------------------------

def family_metrics(results: Sequence[Result], p: str, categories: Sequence[str]) -> dict[str, float]:
    """One rating family's headline, turns, coverage, judge errors and categories (``p``: its prefix)."""
    out: dict[str, float] = {}
    n = len(results)
    scored = [r for r in results if f"{p}score" in r.scores]
    out[f"{p}score"], out[f"{p}score_stderr"] = pooled(scored, p)
    for key in (f"{p}turn1", f"{p}turn2"):
        out[key], out[f"{key}_stderr"] = mean_stderr([r.scores[key] for r in results if key in r.scores])
    out[f"{p}question_mean"], out[f"{p}question_mean_stderr"] = mean_stderr([r.scores[f"{p}score"] for r in scored])
    for turn in (f"{p}turn1", f"{p}turn2"):
        judged = sum(turn in r.scores for r in results)
        out[f"{turn}_judged"], out[f"{turn}_total"] = judged, n
        out[f"{turn}_coverage"] = judged / n if n else math.nan
    out[f"{p}judge_errors"] = sum(r.info.get(f"{p}judge_errors", 0) for r in results)
    for cat in categories:
        in_cat = [r for r in scored if r.info.get("category") == cat]
        if in_cat:
            out[f"{p}category/{cat}"] = pooled(in_cat, p)[0]
    return out


def pooled(results: Sequence[Result], p: str = "") -> tuple[float, float]:
    """Mean over judged turns pooled (FastChat's average), SE clustered on the question."""
    return weighted_mean_stderr([r.scores[f"{p}score"] for r in results],
                                [r.scores.get(f"{p}score_turns", 1.0) for r in results])


def repeat_spread(results: Sequence[Result]) -> dict[str, float]:
    """Spread of the text judge across repeats: mean per-turn SD, and SD of the overall score recomputed per repeat."""
    repeats = max((r.info.get("repeats", 1) for r in results), default=1)
    if repeats < 2:
        return {}
    texts = [t for r in results for k, t in r.extracted.items() if k in ("turn1", "turn2")]
    turn_sds = [statistics.stdev(parsed) for t in texts if len(parsed := [x for x in t["ratings"] if x is not None]) >= 2]
    per_repeat = []
    for rep in range(repeats):  # the pooled score from this repeat's ratings alone
        rows = [t["ratings"][rep] for t in texts if t["ratings"][rep] is not None]
        if rows:
            per_repeat.append(mean(rows))
    out = {"repeats": float(repeats), "repeat_sd_per_turn": mean(turn_sds) if turn_sds else math.nan}
    if len(per_repeat) >= 2:
        out |= {"score_repeat_sd": statistics.stdev(per_repeat), "score_repeat_min": min(per_repeat),
                "score_repeat_max": max(per_repeat)}
    return out
