"""MT-Bench (Zheng et al. 2023): 80 two-turn questions, each turn graded 1-10 by an LLM judge.

Data: the 80 questions (8 categories x 10), the GPT-4 reference answers for
math, reasoning and coding, and the judge prompts of FastChat's ``llm_judge``
ship in ``tasks/data/mt_bench/`` (Apache-2.0, lm-sys/FastChat; sha256 checked
against ``SHA256SUMS`` on load).

Generation follows ``gen_model_answer.py``: turn 1 is the first user message;
turn 2 is a second batched pass whose conversation holds the model's *own*
turn-1 answer, rendered with the checkpoint's chat template. Temperatures are
the reference's per-category ``temperature_config``; max 1024 new tokens.

Judging follows ``gen_judgment.py --mode single``: ``single-v1`` (turn 1) and
``single-v1-multi-turn`` (turn 2), or ``single-math-v1`` and
``single-math-v1-multi-turn`` with the GPT-4 reference answers for math,
reasoning and coding; the judge runs at temperature 0 with 2048 max tokens and
its rating is the first ``[[N]]`` (fallback ``[N]``). Where we differ, on
purpose: an unparsable judgment, a rating outside 1-10 or a failed judge call
is an error that is counted and shown (coverage per turn), never a -1 dropped
later; the task only declares its judge requests (``judge_requests``) and
the runner sends them through its journaled pass, keyed on the judge's
identity and the full prompt (answers and prompt version included), so a
rerun re-judges nothing; and ``--judge-repeats R`` reports the spread across
repeats.

Example: ``harness run --model smollm2-135m-instruct --suite mt_bench --judge hf:smollm2-135m-instruct --limit 8``
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.files import Check, parse_jsonl, read_verified
from harness.core.options import Options, SharedOptions, option
from harness.core.records import Completion, Example, Message, MetricSpec, Request, Result
from harness.core.stats import mean_stderr, weighted_mean_stderr

DATA_DIR = Path(__file__).parent / "data" / "mt_bench"
DATA_FILES = ("question.jsonl", "reference_answer_gpt-4.jsonl", "judge_prompts.jsonl", "LICENSE")

# FastChat llm_judge/common.py `temperature_config`, in question-file order.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "reasoning": 0.0, "math": 0.0, "coding": 0.0,
               "extraction": 0.0, "stem": 0.1, "humanities": 0.1}
NEED_REF_CATS = frozenset({"math", "reasoning", "coding"})  # common.py NEED_REF_CATS
MAX_TOKENS = 1024
JUDGE_TEMPERATURE = 0.0  # run_judge_single: temperature=0, max_tokens=2048
JUDGE_MAX_TOKENS = 2048  # the default of --judge-max-tokens (MTBenchOptions.judge_max_tokens)
RATING_RE = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # common.py one_score_pattern
RATING_BACKUP_RE = re.compile(r"\[(\d+\.?\d*)\]")  # one_score_pattern_backup
PROMPTS = {(False, 1): "single-v1", (True, 1): "single-math-v1",
           (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}
GPT4_JUDGES = ("gpt-4", "gpt-4-0613")  # the judge of the published MT-Bench numbers
OPENAI_API_URL = "https://api.openai.com/v1"


# -- data -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system: str
    template: str

    @property
    def version(self) -> str:
        """Name plus a hash of the exact text, so an edited prompt never reuses old judgments."""
        return f"{self.name}@{hashlib.sha256((self.system + self.template).encode()).hexdigest()[:12]}"

    def render(self, **fields: str) -> tuple[Message, Message]:
        # str.format substitutes values verbatim: braces inside answers are safe.
        return Message("system", self.system), Message("user", self.template.format(**fields))


@dataclass(frozen=True)
class MTBenchData:
    questions: tuple[dict[str, Any], ...]
    references: Mapping[int, tuple[str, str]]
    prompts: Mapping[str, JudgePrompt]
    sha256: Mapping[str, str]


def _verified(name: str) -> tuple[bytes, str]:
    raw = read_verified(DATA_DIR, name)
    return raw, hashlib.sha256(raw).hexdigest()


def _rows(name: str, raw: bytes, check: Check) -> list[dict[str, Any]]:
    def guarded(row: dict[str, Any]) -> str | None:
        try:
            return check(row)
        except (TypeError, KeyError, IndexError) as exc:
            return f"unexpected structure ({type(exc).__name__}: {exc})"

    return [row for _, row in parse_jsonl(raw.decode("utf-8"), str(DATA_DIR / name), check=guarded)]


def _check_question(row: dict[str, Any]) -> str | None:
    if not isinstance(row.get("question_id"), int):
        return "expected an integer question_id"
    if row.get("category") not in TEMPERATURE:
        return f"category {row.get('category')!r} is not one of {', '.join(TEMPERATURE)}"
    turns = row.get("turns")
    if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t for t in turns)):
        return "expected turns: a list of two non-empty strings"
    return None


def _check_reference(row: dict[str, Any]) -> str | None:
    turns = row["choices"][0]["turns"]
    if not (isinstance(row.get("question_id"), int) and len(turns) == 2 and all(isinstance(t, str) for t in turns)):
        return "expected question_id and choices[0].turns with two answers"
    return None


def _check_prompt(row: dict[str, Any]) -> str | None:
    if not all(isinstance(row.get(k), str) for k in ("name", "system_prompt", "prompt_template")):
        return "expected name, system_prompt and prompt_template strings"
    return None


@cache
def load_data() -> MTBenchData:
    """Questions, references and judge prompts, each file checked against SHA256SUMS."""
    raws = {name: _verified(name) for name in DATA_FILES}
    questions = _rows("question.jsonl", raws["question.jsonl"][0], _check_question)
    refs = _rows("reference_answer_gpt-4.jsonl", raws["reference_answer_gpt-4.jsonl"][0], _check_reference)
    prompt_rows = _rows("judge_prompts.jsonl", raws["judge_prompts.jsonl"][0], _check_prompt)
    references = {r["question_id"]: tuple(r["choices"][0]["turns"]) for r in refs}
    prompts = {r["name"]: JudgePrompt(r["name"], r["system_prompt"], r["prompt_template"]) for r in prompt_rows}
    missing = [p for p in PROMPTS.values() if p not in prompts]
    if missing:
        raise UsageError(f"{DATA_DIR / 'judge_prompts.jsonl'} lacks the judge prompt(s) {', '.join(missing)}")
    unreferenced = [q["question_id"] for q in questions
                    if q["category"] in NEED_REF_CATS and q["question_id"] not in references]
    if unreferenced:
        raise UsageError(f"{DATA_DIR / 'reference_answer_gpt-4.jsonl'} has no reference answer for "
                         f"question(s) {unreferenced}; math, reasoning and coding need one")
    return MTBenchData(tuple(questions), references, prompts, {n: d for n, (_, d) in raws.items()})


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
    example_id: str
    turn: int  # 1 or 2
    repeat: int
    prompt: str  # versioned prompt name
    request: Request


def _answers(comps: Sequence[Completion]) -> list[str | None]:
    # Stripped, as gen_model_answer.py stores answers; None marks a failed generation.
    return [c.texts[0].strip() if c.error is None and c.texts else None for c in comps]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# -- the task ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MTBenchOptions(Options):
    prefix = "mt-bench"

    # Judge settings re-judge in the same run directory (judgments are keyed by them), so they are
    # not part of the run id.
    judge_repeats: int = option(1, "judge each answer R times; report mean and spread", flag="--judge-repeats",
                                low=1, high=100, identity=False)
    judge_max_tokens: int = option(JUDGE_MAX_TOKENS, "judge reply budget (FastChat: 2048; lower it for CPU "
                                   "plumbing runs)", flag="--judge-max-tokens", low=1, identity=False)


class MTBench:
    """Two-turn chat questions graded 1-10 by an LLM judge (single-answer grading)."""

    name = "mt_bench"
    version = "2"  # 2: score is FastChat's pooled average (docs/fidelity.md)
    turns = 2
    Options = MTBenchOptions
    needs_judge = True
    needs_chat = True
    needs_code_execution = False
    default_max_drop = 0.2  # rating points (1-10 scale) the CI gate allows by default
    # The headline is FastChat's show_result average: every valid judgment row, turns pooled. An item
    # (question) carries the mean of its judged turns and their count, so the report pools them with
    # standard errors clustered on the question. ``question_mean`` weighs each question once.
    metrics = (
        MetricSpec("score", key="score", kind="continuous", scale=1.0, primary=True, unit="question",
                   weight="score_turns"),
        MetricSpec("turn1", key="turn1", kind="continuous", scale=1.0, unit="question"),
        MetricSpec("turn2", key="turn2", kind="continuous", scale=1.0, unit="question"),
        MetricSpec("question_mean", key="score", kind="continuous", scale=1.0, unit="question"),
    )

    def __init__(self, options: MTBenchOptions | None = None, shared: SharedOptions | None = None) -> None:
        options, shared = options or MTBenchOptions(), shared or SharedOptions()
        self.max_tokens = shared.max_tokens or MAX_TOKENS
        self.seed = shared.seed
        self.repeats = options.judge_repeats
        self.judge_max_tokens = options.judge_max_tokens

    def load(self, limit: int | None = None) -> list[Example]:
        data = load_data()
        rows = data.questions[:limit] if limit else data.questions
        return [Example(id=f"mt_bench/{q['question_id']}",
                        data={"question_id": q["question_id"], "category": q["category"], "turns": tuple(q["turns"]),
                              "reference": data.references.get(q["question_id"])
                              if q["category"] in NEED_REF_CATS else None})
                for q in rows]

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Completion]]) -> list[Request]:
        out = []
        for ex in examples:
            q1, q2 = ex.data["turns"]
            if turn == 0:
                rid, messages = ex.id, (Message("user", q1),)
            else:
                # The model's own turn-1 answer (empty if it failed: turn 2 is then reported
                # as an error, and a rerun regenerates both once turn 1 succeeds).
                answer = _answers(prior[ex.id][:1])[0] or ""
                rid, messages = f"{ex.id}#t2", (Message("user", q1), Message("assistant", answer), Message("user", q2))
            out.append(Request(id=rid, messages=messages, max_tokens=self.max_tokens,
                               temperature=TEMPERATURE[ex.data["category"]], seed=self.seed))
        return out

    # -- scoring ------------------------------------------------------------------------------------

    def judge_requests(self, examples: Sequence[Example],
                       completions: Mapping[str, Sequence[Completion]]) -> list[Request]:
        """The judge requests for these answers (a pure function: the runner sends and journals them).

        Their content (prompt text, answers, sampling) is their journal key, with
        the judge's identity: an edited prompt, a changed answer or another judge
        is judged anew, and everything else is reused."""
        return [j.request for j in self._jobs(examples, completions)]

    def judgment_final(self, completion: Completion) -> bool:
        # A reply without a rating in 1-10 is asked again on a rerun (failed calls always are).
        return judge_outcome(completion)["rating"] is not None

    def _jobs(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]]) -> list[JudgeJob]:
        prompts = load_data().prompts
        jobs = []
        for ex in examples:
            answers = _answers(completions[ex.id])
            q1, q2 = ex.data["turns"]
            ref = ex.data["reference"]
            for turn in (1, 2):
                if any(a is None for a in answers[:turn]):
                    continue  # a failed generation is reported as such, never judged
                prompt = prompts[PROMPTS[(ref is not None, turn)]]
                fields = ({"question": q1, "answer": answers[0]} if turn == 1 else
                          {"question_1": q1, "question_2": q2, "answer_1": answers[0], "answer_2": answers[1]})
                if ref is not None:
                    fields |= {"ref_answer_1": ref[0], "ref_answer_2": ref[1]}
                for rep in range(self.repeats):
                    req = Request(id=f"{ex.id}#judge-t{turn}-r{rep}", messages=prompt.render(**fields),
                                  max_tokens=self.judge_max_tokens, temperature=JUDGE_TEMPERATURE)
                    jobs.append(JudgeJob(ex.id, turn, rep, prompt.version, req))
        return jobs

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: Any) -> list[Result]:
        """Ratings from the judge completions the runner hands over in ``ctx.judgments`` (by request id)."""
        from harness.core.env import scrub

        spec = getattr(ctx, "judge_spec", None)
        judge = JudgeLabel(f"{spec.kind}:{spec.target}" if spec is not None else None, is_gpt4_judge(spec))
        jobs = self._jobs(examples, completions)
        outcomes: dict[str, dict[str, Any] | None] = {}
        for job in jobs:
            comp = ctx.judgments.get(job.request.id)
            outcome = judge_outcome(comp) if comp is not None else None
            if outcome is not None and outcome["error"]:
                outcome["error"] = scrub(outcome["error"])
            outcomes[job.request.id] = outcome
        by_example: dict[str, list[JudgeJob]] = {}
        for job in jobs:
            by_example.setdefault(job.example_id, []).append(job)
        return [self._result(ex, completions[ex.id], by_example.get(ex.id, []), outcomes, judge) for ex in examples]

    def _result(self, ex: Example, comps: Sequence[Completion], jobs: list[JudgeJob],
                outcomes: Mapping[str, dict[str, Any] | None], judge: JudgeLabel) -> Result:
        scores: dict[str, float] = {}
        extracted: dict[str, Any] = {}
        turn_errors: dict[str, str] = {}
        judge_errors = 0
        for turn in (1, 2):
            tjobs = [j for j in jobs if j.turn == turn]
            gen_error = next((c.error for c in comps[:turn] if c.error is not None), None)
            if gen_error is not None or not tjobs:
                turn_errors[f"turn{turn}"] = f"generation failed: {gen_error or 'no answer'}"
                continue
            recs = [outcomes.get(j.request.id) or {"rating": None, "judgment": None, "error": "no judgment"}
                    for j in tjobs]
            ratings = [r["rating"] for r in recs]
            judge_errors += sum(r is None for r in ratings)
            extracted[f"turn{turn}"] = {"ratings": ratings, "judgments": [r["judgment"] for r in recs],
                                        "errors": [r["error"] for r in recs], "prompt": tjobs[0].prompt}
            parsed = [r for r in ratings if r is not None]
            if parsed:
                scores[f"turn{turn}"] = _mean(parsed)
            else:
                turn_errors[f"turn{turn}"] = next(r["error"] for r in recs)
        if scores:
            judged = [scores[t] for t in ("turn1", "turn2") if t in scores]
            scores |= {"score": _mean(judged), "score_turns": float(len(judged))}
        info = {"category": ex.data["category"], "judge": judge.spec, "repeats": self.repeats,
                "judge_errors": judge_errors, "turn_errors": turn_errors,
                "judge_comparable_to_gpt4": judge.comparable}
        error = None if scores else "no turn judged: " + "; ".join(f"{k}: {v}" for k, v in turn_errors.items())
        return Result(id=ex.id, scores=scores, extracted=extracted, error=error, info=info)

    # -- aggregation --------------------------------------------------------------------------------

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        n = len(results)
        out: dict[str, float] = {"n": n, "scored": sum(r.error is None for r in results),
                                 "errors": sum(r.error is not None for r in results)}
        scored = [r for r in results if "score" in r.scores]
        out["score"], out["score_stderr"] = _pooled(scored)
        for key in ("turn1", "turn2"):
            out[key], out[f"{key}_stderr"] = mean_stderr([r.scores[key] for r in results if key in r.scores])
        out["question_mean"], out["question_mean_stderr"] = mean_stderr([r.scores["score"] for r in scored])
        for turn in ("turn1", "turn2"):
            judged = sum(turn in r.scores for r in results)
            out[f"{turn}_judged"], out[f"{turn}_total"] = judged, n
            out[f"{turn}_coverage"] = judged / n if n else math.nan
        out["judge_errors"] = sum(r.info.get("judge_errors", 0) for r in results)
        out["generation_errors"] = sum(v.startswith("generation failed") for r in results
                                       for v in r.info.get("turn_errors", {}).values())
        for cat in TEMPERATURE:
            in_cat = [r for r in scored if r.info.get("category") == cat]
            if in_cat:
                out[f"category/{cat}"] = _pooled(in_cat)[0]
        out |= _repeat_spread(results)
        out["judge_comparable_to_gpt4"] = float(bool(results) and all(r.info.get("judge_comparable_to_gpt4")
                                                                      for r in results))
        return out

    def describe(self) -> dict[str, Any]:
        # Which judge graded a run is recorded by the runner (summary "judge", per-item info, and the
        # judge_comparable_to_gpt4 metric): this description depends on the options alone.
        data = load_data()
        return {"judge_prompts": {name: data.prompts[name].version for name in PROMPTS.values()},
                "judge_temperature": JUDGE_TEMPERATURE, "judge_max_tokens": self.judge_max_tokens,
                "judge_repeats": self.repeats, "reference_answers": "gpt-4 (math, reasoning, coding)",
                "temperatures": dict(TEMPERATURE), "max_tokens": self.max_tokens, "seed": self.seed,
                "data_sha256": dict(data.sha256)}


def _pooled(results: Sequence[Result]) -> tuple[float, float]:
    """Mean over judged turns pooled (FastChat's average), SE clustered on the question."""
    return weighted_mean_stderr([r.scores["score"] for r in results],
                                [r.scores.get("score_turns", 1.0) for r in results])


def _repeat_spread(results: Sequence[Result]) -> dict[str, float]:
    """Spread across judge repeats: mean per-turn SD, and SD of the overall score recomputed per repeat."""
    repeats = max((r.info.get("repeats", 1) for r in results), default=1)
    if repeats < 2:
        return {}
    turn_sds = [statistics.stdev(parsed) for r in results for t in r.extracted.values()
                if len(parsed := [x for x in t["ratings"] if x is not None]) >= 2]
    per_repeat = []
    for rep in range(repeats):  # the pooled score from this repeat's ratings alone
        rows = [t["ratings"][rep] for r in results for t in r.extracted.values() if t["ratings"][rep] is not None]
        if rows:
            per_repeat.append(_mean(rows))
    out = {"repeats": float(repeats), "repeat_sd_per_turn": _mean(turn_sds) if turn_sds else math.nan}
    if len(per_repeat) >= 2:
        out |= {"score_repeat_sd": statistics.stdev(per_repeat), "score_repeat_min": min(per_repeat),
                "score_repeat_max": max(per_repeat)}
    return out
