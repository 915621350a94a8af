"""MT-Bench task: data, prompts, rating parsing, judging, accounting and resume.

A tiny in-process judge adapter answers from a script keyed on (question,
turn), so every expected mean below is computed by hand. HTTP tests against a
real server live in test_mt_bench_http.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.core.errors import EngineError, UsageError
from harness.core.journal import read_records
from harness.core.models import ModelSpec
from harness.core.options import SharedOptions
from harness.core.records import Completion, Request
from harness.run.passes import LazyAdapter, judge_task
from harness.run.score import ScoreRun
from harness.tasks import mt_bench
from harness.tasks.mt_bench import MTBench, MTBenchOptions, is_gpt4_judge, judge_outcome, parse_rating


def _turn_of(req: Request) -> tuple[str, int]:
    qid, _, rest = req.id.partition("#judge-t")
    return qid, int(rest.split("-")[0])


class FakeJudge:
    """An Adapter whose reply to each judge request comes from ``reply(question_id, turn, repeat)``."""

    def __init__(self, reply: Callable[[str, int, int], str | None], model: str = "fake-judge") -> None:
        self.name = "fake"
        self.model = model
        self.reply = reply
        self.requests: list[Request] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "model": self.model, "concurrency": 4}

    def generate(self, requests: Sequence[Request], on_result: Any = None) -> list[Completion]:
        out = []
        for i, req in enumerate(requests):
            self.requests.append(req)
            qid, turn = _turn_of(req)
            text = self.reply(qid, turn, int(req.id.rsplit("-r", 1)[1]))
            comp = Completion(id=req.id, error="HTTP 500 after 3 attempts") if text is None else \
                Completion(id=req.id, texts=(text,))
            if on_result:
                on_result(i, comp)
            out.append(comp)
        return out


def _answers(examples: Sequence[Any], fail: dict[str, int] | None = None) -> dict[str, list[Completion]]:
    """Two completions per example; ``fail[id] = turn`` makes that turn's generation fail."""
    out = {}
    for ex in examples:
        comps = []
        for turn in (1, 2):
            if (fail or {}).get(ex.id) == turn:
                comps.append(Completion(id=ex.id, error="engine timeout"))
            else:
                comps.append(Completion(id=ex.id, texts=(f"answer {turn} to {ex.id} {{not a format field}}",)))
        out[ex.id] = comps
    return out


def _score(task: MTBench, examples: Any, comps: Any, judge: FakeJudge, run_dir: Path,
           spec: ModelSpec | None = None) -> list[Any]:
    """What the runner does: the task's judge requests through the journaled judge pass, then scoring."""
    spec = spec or ModelSpec(kind="openai", target=judge.model, base_url="http://127.0.0.1:1/v1")
    lazy = LazyAdapter({"spec": f"{spec.kind}:{spec.target}", "model": judge.model}, lambda: judge,
                       label=f"{spec.kind}:{spec.target}")
    judgments = judge_task(task, examples, comps, lazy, run_dir)
    ctx = ScoreRun(run_dir, judgments, spec)
    try:
        return task.score(examples, comps, ctx)
    finally:
        ctx.close()


def _journal(run_dir: Path) -> list[dict[str, Any]]:
    return list(read_records(run_dir / "mt_bench.judgments.jsonl"))


# -- data --------------------------------------------------------------------------------------------

def test_packaged_data_is_the_80_reference_questions() -> None:
    task = MTBench()
    examples = task.load()
    assert len(examples) == 80
    assert examples[0].id == "mt_bench/81" and examples[-1].id == "mt_bench/160"
    cats = [ex.data["category"] for ex in examples]
    assert {c: cats.count(c) for c in set(cats)} == {c: 10 for c in mt_bench.TEMPERATURE}
    with_ref = {ex.data["category"] for ex in examples if ex.data["reference"] is not None}
    assert with_ref == {"math", "reasoning", "coding"}
    assert all(len(ex.data["turns"]) == 2 for ex in examples)
    assert [ex.id for ex in task.load(limit=3)] == ["mt_bench/81", "mt_bench/82", "mt_bench/83"]


def test_packaged_data_matches_sha256sums_and_ships_the_licence() -> None:
    data_dir = mt_bench.DATA_DIR
    sums = dict(line.split()[::-1] for line in (data_dir / "SHA256SUMS").read_text().splitlines())
    for name in mt_bench.DATA_FILES:
        assert hashlib.sha256((data_dir / name).read_bytes()).hexdigest() == sums[name]
    assert "Apache License" in (data_dir / "LICENSE").read_text()


@pytest.fixture
def data_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "mt_bench"
    shutil.copytree(mt_bench.DATA_DIR, copy)
    monkeypatch.setattr(mt_bench, "DATA_DIR", copy)
    mt_bench.load_data.cache_clear()
    yield copy
    mt_bench.load_data.cache_clear()


def test_tampered_data_file_fails_its_checksum(data_copy: Path) -> None:
    q = data_copy / "question.jsonl"
    q.write_bytes(q.read_bytes().replace(b"Hawaii", b"Hawai'i"))
    with pytest.raises(UsageError, match="question.jsonl fails its checksum"):
        MTBench().load()


def test_malformed_question_line_is_named(data_copy: Path) -> None:
    q = data_copy / "question.jsonl"
    lines = q.read_text().splitlines()
    lines[2] = json.dumps({"question_id": 83, "category": "writing", "turns": ["only one turn"]})
    q.write_text("\n".join(lines) + "\n")
    sums = (data_copy / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256(q.read_bytes()).hexdigest()
    (data_copy / "SHA256SUMS").write_text("\n".join(f"{digest}  question.jsonl" if s.endswith(" question.jsonl")
                                                    else s for s in sums) + "\n")
    with pytest.raises(UsageError, match=r"question.jsonl:3: expected turns: a list of two non-empty strings"):
        MTBench().load()


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(UsageError, match="--judge-repeats must be >= 1"):
        MTBench(MTBenchOptions(judge_repeats=0))
    with pytest.raises(UsageError, match="--max-tokens"):
        MTBench(shared=SharedOptions(max_tokens=0))


# -- generation requests -----------------------------------------------------------------------------

def test_turn1_requests_use_reference_temperatures_and_seed() -> None:
    task = MTBench(shared=SharedOptions(seed=7))
    by_cat = {ex.data["category"]: ex for ex in task.load()}
    reqs = {r.id: r for r in task.requests(list(by_cat.values()), 0, {})}
    expect = {"writing": 0.7, "roleplay": 0.7, "math": 0.0, "coding": 0.0, "reasoning": 0.0, "extraction": 0.0,
              "stem": 0.1, "humanities": 0.1}
    for cat, ex in by_cat.items():
        req = reqs[ex.id]
        assert req.temperature == expect[cat], cat
        assert req.max_tokens == 1024 and req.seed == 7
        assert [(m.role, m.content) for m in req.messages] == [("user", ex.data["turns"][0])]
    assert MTBench(shared=SharedOptions(max_tokens=64)).requests(task.load(1), 0, {})[0].max_tokens == 64


def test_turn2_request_carries_the_models_own_turn1_answer() -> None:
    task = MTBench()
    examples = task.load(2)
    prior = {ex.id: [Completion(id=ex.id, texts=(f" my first answer for {ex.id}\n",))] for ex in examples}
    reqs = task.requests(examples, 1, prior)
    assert [r.id for r in reqs] == ["mt_bench/81#t2", "mt_bench/82#t2"]
    q1, q2 = examples[0].data["turns"]
    assert [(m.role, m.content) for m in reqs[0].messages] == [
        ("user", q1), ("assistant", "my first answer for mt_bench/81"), ("user", q2)]
    assert reqs[0].temperature == 0.7


# -- rating parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rating"), [
    ("The answer is fine. Rating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("no double brackets, but Rating: [6]", 6.0),  # FastChat's fallback pattern
    ("first [[3]] then [[9]]", 3.0),  # first match, as re.search in the reference
    ("[2] cited, then [[4]]", 4.0),  # the [[N]] pattern is tried before the fallback
    ("I would give it a 7 out of 10.", None),
    ("Rating: [[seven]]", None),
])
def test_parse_rating(text: str, rating: float | None) -> None:
    assert parse_rating(text) == rating


def test_out_of_range_and_failed_calls_are_errors_not_scores() -> None:
    assert judge_outcome(Completion(id="x", texts=("Rating: [[11]]",)))["error"] == "rating 11 is outside the 1-10 scale"
    assert judge_outcome(Completion(id="x", texts=("[[0]]",)))["rating"] is None
    failed = judge_outcome(Completion(id="x", error="HTTP 429 after 4 attempts"))
    assert failed == {"rating": None, "judgment": None, "error": "judge call failed: HTTP 429 after 4 attempts"}
    assert judge_outcome(Completion(id="x", texts=("meh",)))["error"].startswith("unparsable judgment")


# -- judge prompts -------------------------------------------------------------------------------------

def test_judge_prompt_selection_and_reference_insertion(tmp_path: Path) -> None:
    task = MTBench()
    examples = {ex.data["category"]: ex for ex in task.load()}
    writing, math_q = examples["writing"], examples["math"]
    judge = FakeJudge(lambda q, t, r: "[[5]]")
    _score(task, [writing, math_q], _answers([writing, math_q]), judge, tmp_path)
    sent = {(_turn_of(r)): r for r in judge.requests}
    assert all(r.temperature == 0.0 and r.max_tokens == 2048 for r in judge.requests)

    sys1, user1 = sent[(writing.id, 1)].messages
    assert sys1.content == "You are a helpful assistant." and "[The Start of Assistant's Answer]" in user1.content
    assert writing.data["turns"][0] in user1.content and "Reference Answer" not in user1.content
    assert f"answer 1 to {writing.id} {{not a format field}}" in user1.content

    _, user2 = sent[(writing.id, 2)].messages
    assert "### Assistant A:\nanswer 1 to" in user2.content and f"answer 2 to {writing.id}" in user2.content
    assert writing.data["turns"][1] in user2.content

    ref1, ref2 = math_q.data["reference"]
    sysm, userm = sent[(math_q.id, 1)].messages
    assert "reference answer" in userm.content.lower() and ref1 in userm.content and ref2 not in userm.content
    _, userm2 = sent[(math_q.id, 2)].messages
    assert ref1 in userm2.content and ref2 in userm2.content
    assert "second question" in sent[(math_q.id, 2)].messages[0].content


# -- scoring and accounting ---------------------------------------------------------------------------

RATINGS = {("mt_bench/81", 1): "Good. Rating: [[8]]", ("mt_bench/81", 2): "Rating: [[6]]",
           ("mt_bench/82", 1): "Rating: [[4]]", ("mt_bench/82", 2): "I cannot decide.",  # malformed
           ("mt_bench/83", 1): "[[10]]", ("mt_bench/83", 2): "Rating: [7]",  # fallback pattern
           ("mt_bench/84", 1): None, ("mt_bench/84", 2): None}  # judge call failed after retries


def test_means_exclude_malformed_and_failed_judgments_and_show_coverage(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(4)
    results = _score(task, examples, _answers(examples), FakeJudge(lambda q, t, r: RATINGS[(q, t)]), tmp_path)
    by_id = {r.id: r for r in results}
    assert by_id["mt_bench/81"].scores == {"turn1": 8.0, "turn2": 6.0, "score": 7.0, "score_turns": 2.0}
    assert by_id["mt_bench/82"].scores == {"turn1": 4.0, "score": 4.0, "score_turns": 1.0}
    assert by_id["mt_bench/82"].info["turn_errors"]["turn2"].startswith("unparsable judgment")
    assert by_id["mt_bench/83"].scores == {"turn1": 10.0, "turn2": 7.0, "score": 8.5, "score_turns": 2.0}
    assert by_id["mt_bench/84"].scores == {} and "judge call failed" in by_id["mt_bench/84"].error

    agg = task.aggregate(results)
    assert agg["turn1"] == pytest.approx((8 + 4 + 10) / 3)
    assert agg["turn2"] == pytest.approx((6 + 7) / 2)
    assert agg["score"] == pytest.approx((8 + 6 + 4 + 10 + 7) / 5)  # FastChat: valid rows pooled
    assert agg["question_mean"] == pytest.approx((7 + 4 + 8.5) / 3)
    assert agg["turn1_judged"] == 3 and agg["turn2_judged"] == 2 and agg["turn1_total"] == 4
    assert agg["turn1_coverage"] == 0.75 and agg["turn2_coverage"] == 0.5
    assert agg["judge_errors"] == 3 and agg["errors"] == 1 and agg["scored"] == 3
    sd = math.sqrt(sum((x - agg["turn1"]) ** 2 for x in (8, 4, 10)) / 2)
    assert agg["turn1_stderr"] == pytest.approx(sd / math.sqrt(3))
    assert agg["category/writing"] == pytest.approx((8 + 6 + 4 + 10 + 7) / 5)
    assert agg["judge_comparable_to_gpt4"] == 0.0


def test_failed_generation_is_not_judged_and_is_counted(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(2)
    judge = FakeJudge(lambda q, t, r: "[[5]]")
    results = _score(task, examples, _answers(examples, fail={"mt_bench/81": 1, "mt_bench/82": 2}), judge, tmp_path)
    assert {_turn_of(r) for r in judge.requests} == {("mt_bench/82", 1)}
    assert results[0].error.startswith("no turn judged") and "generation failed: engine timeout" in results[0].error
    assert results[1].scores == {"turn1": 5.0, "score": 5.0, "score_turns": 1.0}
    agg = task.aggregate(results)
    assert agg["generation_errors"] == 3 and agg["judge_errors"] == 0 and agg["turn2_coverage"] == 0.0


def test_repeats_report_mean_and_spread(tmp_path: Path) -> None:
    task = MTBench(MTBenchOptions(judge_repeats=3))
    examples = task.load(2)
    ratings = {0: 6, 1: 7, 2: 8}
    judge = FakeJudge(lambda q, t, r: f"[[{ratings[r] + (t == 2)}]]")
    results = _score(task, examples, _answers(examples), judge, tmp_path)
    assert len(judge.requests) == 2 * 2 * 3
    assert results[0].scores == {"turn1": 7.0, "turn2": 8.0, "score": 7.5, "score_turns": 2.0}
    assert results[0].extracted["turn1"]["ratings"] == [6.0, 7.0, 8.0]
    agg = task.aggregate(results)
    assert agg["repeat_sd_per_turn"] == pytest.approx(1.0)
    # Per repeat the overall score is 6.5, 7.5, 8.5: SD 1.0.
    assert agg["score_repeat_sd"] == pytest.approx(1.0)
    assert (agg["score_repeat_min"], agg["score_repeat_max"]) == (6.5, 8.5)


# -- resume and judge identity ------------------------------------------------------------------------

def test_rerun_rejudges_nothing_final_and_retries_only_failures(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(4)
    comps = _answers(examples)
    _score(task, examples, comps, FakeJudge(lambda q, t, r: RATINGS[(q, t)]), tmp_path)
    second = FakeJudge(lambda q, t, r: "[[9]]")
    results = _score(task, examples, comps, second, tmp_path)
    retried = sorted(_turn_of(r) for r in second.requests)
    assert retried == [("mt_bench/82", 2), ("mt_bench/84", 1), ("mt_bench/84", 2)]
    assert {r.id: r.scores.get("score") for r in results} == {
        "mt_bench/81": 7.0, "mt_bench/82": 6.5, "mt_bench/83": 8.5, "mt_bench/84": 9.0}
    third = FakeJudge(lambda q, t, r: "[[1]]")
    _score(task, examples, comps, third, tmp_path)
    assert third.requests == []
    keys = [rec["key"] for rec in _journal(tmp_path)]
    final = [rec for rec in _journal(tmp_path)
             if judge_outcome(Completion.from_dict(rec["completion"]))["rating"] is not None]
    assert len({r["key"] for r in final}) == len(final) == 8 and len(keys) == 11


def test_changed_answer_is_rejudged(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(1)
    _score(task, examples, _answers(examples), FakeJudge(lambda q, t, r: "[[5]]"), tmp_path)
    changed = {examples[0].id: [Completion(id="x", texts=("a new first answer",)), _answers(examples)[examples[0].id][1]]}
    judge = FakeJudge(lambda q, t, r: "[[3]]")
    results = _score(task, examples, changed, judge, tmp_path)
    assert len(judge.requests) == 2  # turn 2's prompt holds answer 1 too, so both are new
    assert results[0].scores["score"] == 3.0


def test_changed_judge_sampling_is_rejudged(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(1)
    _score(task, examples, _answers(examples), FakeJudge(lambda q, t, r: "[[5]]"), tmp_path)
    judge = FakeJudge(lambda q, t, r: "[[3]]")
    _score(MTBench(MTBenchOptions(judge_max_tokens=64)), examples, _answers(examples), judge, tmp_path)
    assert len(judge.requests) == 2 and judge.requests[0].max_tokens == 64


def test_a_different_judge_never_reuses_another_judges_ratings(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(2)
    comps = _answers(examples)
    _score(task, examples, comps, FakeJudge(lambda q, t, r: "[[2]]", model="judge-a"), tmp_path)
    b = FakeJudge(lambda q, t, r: "[[9]]", model="judge-b")
    results = _score(task, examples, comps, b, tmp_path)
    assert len(b.requests) == 4
    assert all(r.scores["score"] == 9.0 for r in results)
    assert {r.info["judge"] for r in results} == {"openai:judge-b"}
    a_again = FakeJudge(lambda q, t, r: "[[7]]", model="judge-a")
    results = _score(task, examples, comps, a_again, tmp_path)
    assert a_again.requests == [] and all(r.scores["score"] == 2.0 for r in results)


def test_judge_dying_mid_pass_keeps_finished_judgments(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(3)
    comps = _answers(examples)

    class Dies(FakeJudge):
        def generate(self, requests: Sequence[Request], on_result: Any = None) -> list[Completion]:
            super().generate(requests[:2], on_result)
            raise ConnectionError("server gone")

    with pytest.raises(EngineError, match="server gone"):
        _score(task, examples, comps, Dies(lambda q, t, r: "[[6]]"), tmp_path)
    again = FakeJudge(lambda q, t, r: "[[6]]")
    results = _score(task, examples, comps, again, tmp_path)
    assert len(again.requests) == 4 and all(r.scores["score"] == 6.0 for r in results)


# -- comparability ------------------------------------------------------------------------------------

def test_only_gpt4_on_openai_is_comparable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert is_gpt4_judge(ModelSpec(kind="openai", target="gpt-4"))
    assert not is_gpt4_judge(ModelSpec(kind="openai", target="gpt-4", base_url="http://127.0.0.1:8000/v1"))
    assert not is_gpt4_judge(ModelSpec(kind="openai", target="gpt-4o-mini"))
    assert not is_gpt4_judge(ModelSpec(kind="hf", target="smollm2-135m-instruct"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9/v1")
    assert not is_gpt4_judge(ModelSpec(kind="openai", target="gpt-4"))


def test_describe_labels_a_non_gpt4_judge(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(1)
    results = _score(task, examples, _answers(examples), FakeJudge(lambda q, t, r: "[[5]]"), tmp_path,
                     spec=ModelSpec(kind="hf", target="smollm2-135m-instruct"))
    assert results[0].info["judge"] == "hf:smollm2-135m-instruct"
    assert results[0].info["judge_comparable_to_gpt4"] is False
    assert task.aggregate(results)["judge_comparable_to_gpt4"] == 0.0
    desc = task.describe()  # the options alone: which judge graded a run is recorded by the runner
    assert "judge" not in desc and "judge_note" not in desc
    assert set(desc["judge_prompts"]) == {"single-v1", "single-math-v1", "single-v1-multi-turn",
                                          "single-math-v1-multi-turn"}
    assert desc["data_sha256"]["question.jsonl"].startswith("119565ad")
