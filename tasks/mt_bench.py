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

Likelihood judging (``--judge-mode likelihood``, the default for local
``hf:``/``vllm:`` judges, never chosen silently for an API judge): instead of
generating a judgment, the judge's log-probability of each of the ten
continuations ``Rating: [[1]]`` .. ``Rating: [[10]]`` right after the same
judge prompt (its chat template and generation prompt) is read, normalised
over the ten, and the rating is the expectation (G-Eval, Liu et al. 2023,
weights each score by its probability). A small judge that never writes the
``[[N]]`` format still yields a rating. Likelihood ratings are separate metrics
(``likelihood_score`` ...), never pooled with parsed-text ratings;
``--judge-mode both`` records both (docs/mt_bench.md).

Example: ``harness run --model smollm2-135m-instruct --suite mt_bench --judge hf:smollm2-135m-instruct --limit 8``
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.files import Check, parse_jsonl, read_verified
from harness.core.options import Options, SharedOptions, option
from harness.core.records import (
    Completion,
    Example,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    Request,
    Result,
)
from harness.tasks.mt_bench_judging import (
    FAMILIES,
    JUDGE_TEMPERATURE,
    LIKELIHOOD,
    RATING_CONTINUATION,
    RATINGS,
    JudgeJob,
    JudgeLabel,
    JudgeMode,
    family_metrics,
    is_gpt4_judge,
    judge_outcome,
    likelihood_outcome,
    metric_specs,
    repeat_spread,
    resolve_judge_mode,
)
from harness.tasks.mt_bench_judging import mean as _mean
from harness.tasks.mt_bench_judging import parse_rating as parse_rating  # re-exported

DATA_DIR = Path(__file__).parent / "data" / "mt_bench"
DATA_FILES = ("question.jsonl", "reference_answer_gpt-4.jsonl", "judge_prompts.jsonl", "LICENSE")

# FastChat llm_judge/common.py `temperature_config`, in question-file order.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "reasoning": 0.0, "math": 0.0, "coding": 0.0,
               "extraction": 0.0, "stem": 0.1, "humanities": 0.1}
NEED_REF_CATS = frozenset({"math", "reasoning", "coding"})  # common.py NEED_REF_CATS
MAX_TOKENS = 1024
JUDGE_MAX_TOKENS = 2048  # the default of --judge-max-tokens (MTBenchOptions.judge_max_tokens)
PROMPTS = {(False, 1): "single-v1", (True, 1): "single-math-v1",
           (False, 2): "single-v1-multi-turn", (True, 2): "single-math-v1-multi-turn"}


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


def _answers(comps: Sequence[Completion]) -> list[str | None]:
    # Stripped, as gen_model_answer.py stores answers; None marks a failed generation.
    return [c.texts[0].strip() if c.error is None and c.texts else None for c in comps]


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
    judge_mode: JudgeMode = option("auto", "likelihood: the expectation of the judge's probabilities of "
                                   "'Rating: [[1]]'..'[[10]]' (auto for hf:/vllm: judges); text: parse the "
                                   "[[rating]] it writes (auto for API judges); both: record both",
                                   flag="--judge-mode", identity=False)


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
    metrics = metric_specs("", primary=True)  # text judging; use_judge sets the instance's families

    def __init__(self, options: MTBenchOptions | None = None, shared: SharedOptions | None = None) -> None:
        options, shared = options or MTBenchOptions(), shared or SharedOptions()
        self.max_tokens = shared.max_tokens or MAX_TOKENS
        self.seed = shared.seed
        self.repeats = options.judge_repeats
        self.judge_max_tokens = options.judge_max_tokens
        self.judge_mode_option = options.judge_mode
        # Until the runner names the judge (use_judge), ``auto`` means text, as before likelihood judging.
        self._set_mode("text" if options.judge_mode == "auto" else options.judge_mode)

    def use_judge(self, spec: Any) -> None:
        """The runner names the judge before any request is built: resolve ``auto`` against it, and
        refuse (one line) a mode this judge cannot serve or repeats that would change nothing."""
        mode = resolve_judge_mode(self.judge_mode_option, spec)
        if mode == "likelihood" and self.repeats > 1:
            why = "" if self.judge_mode_option != "auto" else f", the default for the local judge {spec.label}"
            raise UsageError(f"--judge-repeats {self.repeats} has no effect with --judge-mode likelihood{why} (a "
                             "likelihood rating is deterministic); pass --judge-mode text or both to repeat text "
                             "judgments, or drop --judge-repeats")
        if mode == "likelihood" and self.judge_max_tokens != JUDGE_MAX_TOKENS:
            # Not refused: older quick-start commands pass it for a local judge, which now rates by likelihood.
            logging.getLogger("harness").warning("--judge-max-tokens %d has no effect with --judge-mode likelihood "
                                                 "(the judge generates nothing)", self.judge_max_tokens)
        self._set_mode(mode)

    def _set_mode(self, mode: str) -> None:
        self.judge_mode = mode
        self.families = FAMILIES[mode]
        self.metrics = tuple(m for i, p in enumerate(self.families) for m in metric_specs(p, primary=i == 0))

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
        if "" not in self.families:
            return []
        return [j.text_request(rep, self.judge_max_tokens) for j in self._jobs(examples, completions)
                for rep in range(self.repeats)]

    def judge_rating_requests(self, examples: Sequence[Example],
                              completions: Mapping[str, Sequence[Completion]]) -> list[LoglikelihoodRequest]:
        """The log-likelihood requests of likelihood judging: ten per judged turn (none in text mode).
        Deterministic, so never repeated; journaled and keyed like the text judge's requests."""
        if LIKELIHOOD not in self.families:
            return []
        return [r for j in self._jobs(examples, completions) for r in j.rating_requests()]

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
                jobs.append(JudgeJob(ex.id, turn, prompt.version, prompt.render(**fields)))
        return jobs

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: Any) -> list[Result]:
        """Ratings from what the runner's judge passes hand over by request id: text judgments in
        ``ctx.judgments``, scored rating continuations in ``ctx.judge_scores``."""
        spec = getattr(ctx, "judge_spec", None)
        judge = JudgeLabel(f"{spec.kind}:{spec.target}" if spec is not None else None, is_gpt4_judge(spec))
        jobs = self._jobs(examples, completions)
        texts = self._text_outcomes(jobs, ctx.judgments) if "" in self.families else {}
        likely = (self._likelihood_outcomes(jobs, getattr(ctx, "judge_scores", {}))
                  if LIKELIHOOD in self.families else {})
        by_example: dict[str, list[JudgeJob]] = {}
        for job in jobs:
            by_example.setdefault(job.example_id, []).append(job)
        return [self._result(ex, completions[ex.id], by_example.get(ex.id, []), texts | likely, judge)
                for ex in examples]

    def _text_outcomes(self, jobs: Sequence[JudgeJob], judgments: Mapping[str, Completion]) -> dict[str, Any]:
        """Per text request id, the parsed judgment (None: the judge pass left nothing)."""
        from harness.core.env import scrub

        out: dict[str, Any] = {}
        for job in jobs:
            for rep in range(self.repeats):
                rid = f"{job.base_id}-r{rep}"
                comp = judgments.get(rid)
                outcome = judge_outcome(comp) if comp is not None else None
                if outcome is not None and outcome["error"]:
                    outcome["error"] = scrub(outcome["error"])
                out[rid] = outcome
        return out

    def _likelihood_outcomes(self, jobs: Sequence[JudgeJob],
                             scores: Mapping[str, LoglikelihoodResult]) -> dict[str, Any]:
        """Per judged turn (``<base id>-lik``), the distribution over the ten ratings and its expectation."""
        from harness.core.env import scrub

        out: dict[str, Any] = {}
        for job in jobs:
            outcome = likelihood_outcome([scores.get(r.id) for r in job.rating_requests()])
            if outcome["error"]:
                outcome["error"] = scrub(outcome["error"])
            out[f"{job.base_id}-lik"] = outcome
        return out

    def _turn(self, prefix: str, job: JudgeJob, outcomes: Mapping[str, Any]) -> tuple[float | None, dict, int]:
        """One family's rating of one turn: (mean rating or None, what is recorded, judge errors)."""
        if prefix == LIKELIHOOD:
            rec = outcomes.get(f"{job.base_id}-lik") or likelihood_outcome([])
            entry = {**rec, "prompt": job.prompt, "continuation": RATING_CONTINUATION, "ratings_scored": list(RATINGS)}
            return rec["rating"], entry, int(rec["rating"] is None)
        recs = [outcomes.get(f"{job.base_id}-r{rep}") or {"rating": None, "judgment": None, "error": "no judgment"}
                for rep in range(self.repeats)]
        ratings = [r["rating"] for r in recs]
        entry = {"ratings": ratings, "judgments": [r["judgment"] for r in recs],
                 "errors": [r["error"] for r in recs], "prompt": job.prompt}
        parsed = [r for r in ratings if r is not None]
        return (_mean(parsed) if parsed else None), entry, sum(r is None for r in ratings)

    def _result(self, ex: Example, comps: Sequence[Completion], jobs: list[JudgeJob],
                outcomes: Mapping[str, Any], judge: JudgeLabel) -> Result:
        scores: dict[str, float] = {}
        extracted: dict[str, Any] = {}
        turn_errors: dict[str, str] = {}
        judge_errors = dict.fromkeys(self.families, 0)
        for turn in (1, 2):
            job = next((j for j in jobs if j.turn == turn), None)
            gen_error = next((c.error for c in comps[:turn] if c.error is not None), None)
            if gen_error is not None or job is None:
                turn_errors[f"turn{turn}"] = f"generation failed: {gen_error or 'no answer'}"
                continue
            for prefix in self.families:
                value, entry, errors = self._turn(prefix, job, outcomes)
                key = f"{prefix}turn{turn}"
                extracted[key] = entry
                judge_errors[prefix] += errors
                if value is not None:
                    scores[key] = value
                else:
                    turn_errors[key] = entry["error"] if prefix else next(e for e in entry["errors"] if e)
        for prefix in self.families:
            judged = [scores[k] for t in ("turn1", "turn2") if (k := f"{prefix}{t}") in scores]
            if judged:
                scores |= {f"{prefix}score": _mean(judged), f"{prefix}score_turns": float(len(judged))}
        info = {"category": ex.data["category"], "judge": judge.spec, "judge_mode": self.judge_mode,
                "repeats": self.repeats, **{f"{p}judge_errors": n for p, n in judge_errors.items()},
                "turn_errors": turn_errors, "judge_comparable_to_gpt4": judge.comparable}
        headline = f"{self.families[0]}score"
        error = None if headline in scores else \
            "no turn judged: " + "; ".join(f"{k}: {v}" for k, v in turn_errors.items())
        return Result(id=ex.id, scores=scores, extracted=extracted, error=error, info=info)

    # -- aggregation --------------------------------------------------------------------------------

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        n = len(results)
        out: dict[str, float] = {"n": n, "scored": sum(r.error is None for r in results),
                                 "errors": sum(r.error is not None for r in results)}
        for prefix in self.families:  # each family apart: text and likelihood ratings never share a mean
            out |= family_metrics(results, prefix, tuple(TEMPERATURE))
        out["generation_errors"] = sum(v.startswith("generation failed") for r in results
                                       for v in r.info.get("turn_errors", {}).values())
        if "" in self.families:
            out |= repeat_spread(results)
        out["judge_comparable_to_gpt4"] = float(bool(results) and all(r.info.get("judge_comparable_to_gpt4")
                                                                      for r in results))
        return out

    def describe(self) -> dict[str, Any]:
        # Which judge graded a run is recorded by the runner (summary "judge", per-item info, and the
        # judge_comparable_to_gpt4 metric): this description depends on the options alone.
        data = load_data()
        out = {"judge_prompts": {name: data.prompts[name].version for name in PROMPTS.values()},
               "judge_temperature": JUDGE_TEMPERATURE, "judge_max_tokens": self.judge_max_tokens,
               "judge_repeats": self.repeats, "judge_mode": self.judge_mode,
               "reference_answers": "gpt-4 (math, reasoning, coding)",
               "temperatures": dict(TEMPERATURE), "max_tokens": self.max_tokens, "seed": self.seed,
               "data_sha256": dict(data.sha256)}
        if LIKELIHOOD in self.families:
            out["likelihood_continuations"] = [RATING_CONTINUATION.format(k=k) for k in RATINGS]
        return out
