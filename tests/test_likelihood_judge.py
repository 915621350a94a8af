"""Likelihood judging for local judges (issue 14.4): MT-Bench ratings from the judge's probabilities.

With ``--judge-mode likelihood`` (the default for hf:/vllm: judges) the judge
scores the ten continuations ``Rating: [[1]]`` .. ``Rating: [[10]]`` after its
prompt; the rating is the expectation of the normalised distribution. Checked
here: the mode follows the judge and is never likelihood for an API judge (a
real HTTP judge keeps text parsing; an explicit likelihood fails in one line
before any request); a tiny random checkpoint judging through the HF adapter
gives ratings equal to the expectation over the distribution recorded, which
is the softmax of the log-likelihoods the adapter returns for those exact
requests; likelihood and text ratings are separate metrics; a killed judging
pass resumes scoring only the rest, and a finished run rerun scores nothing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from openai_stub import Call, Reply, StubServer, echo_text

from harness.cli import main
from harness.core.errors import UsageError
from harness.core.journal import read_records
from harness.core.models import ModelSpec
from harness.core.records import Completion, LoglikelihoodResult
from harness.tasks.mt_bench import (
    RATINGS,
    MTBench,
    MTBenchOptions,
    likelihood_outcome,
    resolve_judge_mode,
)

HF = ModelSpec(kind="hf", target="/models/judge")
API = ModelSpec(kind="openai", target="gpt-4o-mini", base_url="http://127.0.0.1:1/v1")


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("SFT_HARNESS_CACHE", str(tmp_path / "cache"))


def behaviour(call: Call) -> Reply:
    """The model under test echoes; a judge (any chat call carrying the judge prompt) rates 7."""
    system = " ".join(m.get("content", "") for m in call.body.get("messages", ()) if m.get("role") == "system")
    if "[[rating]]" in system or "[[rating]]" in call.content:
        return Reply(text="Fine answer. Rating: [[7]]")
    return Reply(text=echo_text(call.content))


def answers(examples: list[Any]) -> dict[str, list[Completion]]:
    return {ex.id: [Completion(id=ex.id, texts=(f"answer {t} to {ex.id}",)) for t in (1, 2)] for ex in examples}


# -- the mode -------------------------------------------------------------------------------------

def test_auto_mode_is_likelihood_for_local_judges_and_text_for_api_judges() -> None:
    assert resolve_judge_mode("auto", HF) == "likelihood"
    assert resolve_judge_mode("auto", ModelSpec(kind="vllm", target="/m")) == "likelihood"
    assert resolve_judge_mode("auto", ModelSpec(kind="auto", target="smollm2-135m-instruct")) == "likelihood"
    assert resolve_judge_mode("auto", API) == "text"
    assert resolve_judge_mode("text", HF) == "text" and resolve_judge_mode("both", HF) == "both"
    for mode in ("likelihood", "both"):
        with pytest.raises(UsageError, match=r"^--judge-mode \w+ needs a local judge .* use --judge-mode text"):
            resolve_judge_mode(mode, API)


def test_an_unknown_judge_mode_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["run", "--model", "openai:stub", "--base-url", "http://127.0.0.1:9/v1", "--suite", "mt_bench",
                 "--judge", "openai:stub", "--judge-mode", "bogus", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == "harness: error: --judge-mode 'bogus': choose from auto, likelihood, " \
        "text, both"


def test_likelihood_mode_refuses_repeats_that_change_nothing() -> None:
    with pytest.raises(UsageError, match=r"^--judge-repeats 3 has no effect with --judge-mode likelihood"):
        MTBench(MTBenchOptions(judge_repeats=3)).use_judge(HF)
    task = MTBench(MTBenchOptions(judge_repeats=3, judge_mode="both"))
    task.use_judge(HF)  # both: the text judgments are repeated, the likelihood rating is read once
    examples = task.load(1)
    assert len(task.judge_requests(examples, answers(examples))) == 2 * 3
    assert len(task.judge_rating_requests(examples, answers(examples))) == 2 * len(RATINGS)


def test_judge_max_tokens_with_likelihood_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    task = MTBench(MTBenchOptions(judge_max_tokens=256))
    with caplog.at_level("WARNING", logger="harness"):
        task.use_judge(HF)  # the old README command passes it with a local judge: still runs
    assert task.judge_mode == "likelihood" and "--judge-max-tokens 256 has no effect" in caplog.text


def test_the_requests_follow_the_mode() -> None:
    examples = MTBench().load(2)
    comps = answers(examples)
    task = MTBench()
    task.use_judge(HF)
    assert task.judge_requests(examples, comps) == []
    rating = task.judge_rating_requests(examples, comps)
    assert len(rating) == 2 * 2 * 10
    first = rating[:10]
    assert [r.continuation for r in first] == [f"Rating: [[{k}]]" for k in range(1, 11)]
    assert len({r.context for r in first}) == 1 and first[0].is_chat  # the text judge's very prompt
    text = MTBench()
    text.use_judge(API)
    assert text.judge_rating_requests(examples, comps) == []
    assert [m.content for m in text.judge_requests(examples, comps)[0].messages] == \
        [m.content for m in first[0].context]
    assert [m.name for m in task.metrics] == ["likelihood_score", "likelihood_turn1", "likelihood_turn2",
                                              "likelihood_question_mean"]
    assert task.metrics[0].primary and [m.name for m in text.metrics][0] == "score"


def test_likelihood_outcome_is_the_expectation_and_failures_are_errors() -> None:
    lps = [-float(k) for k in RATINGS]  # p_k proportional to e^-k
    out = likelihood_outcome([LoglikelihoodResult(id=f"p{k}", logprob_sum=lp, n_tokens=3) for k, lp in
                              zip(RATINGS, lps, strict=True)])
    z = sum(math.exp(lp) for lp in lps)
    assert out["distribution"] == pytest.approx([math.exp(lp) / z for lp in lps])
    assert out["rating"] == pytest.approx(sum(k * math.exp(lp) / z for k, lp in zip(RATINGS, lps, strict=True)))
    huge = likelihood_outcome([LoglikelihoodResult(id="p", logprob_sum=-1e4 - k, n_tokens=3) for k in RATINGS])
    assert math.isfinite(huge["rating"])  # shifted by the max: no 0/0 for very unlikely prompts
    broken = [LoglikelihoodResult(id="p", logprob_sum=-1.0, n_tokens=3)] * 9 + [
        LoglikelihoodResult(id="p10", error="context + continuation are 9000 tokens")]
    assert likelihood_outcome(broken) == {"rating": None, "distribution": None, "logprobs": None,
                                          "error": "judge scoring failed: context + continuation are 9000 tokens"}
    assert likelihood_outcome([None] * 10)["error"] == "no likelihood judgment"


# -- a real HTTP judge keeps text parsing ----------------------------------------------------------

def test_api_judge_over_http_is_judged_by_parsed_text(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    out = tmp_path / "runs"
    with StubServer(behaviour) as stub:
        assert main(["run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "mt_bench",
                     "--judge", "openai:stub", "--judge-base-url", stub.url, "--limit", "2",
                     "--out", str(out), "--run-id", "api"]) == 0
        assert stub.count("/v1/completions") == 0  # no scoring request ever reached the endpoint
    rd = out / "api"
    summary = json.loads((rd / "summary.json").read_text())["tasks"]["mt_bench"]
    assert summary["metrics"]["score"] == 7.0 and summary["metrics"]["judge_errors"] == 0
    assert not any(k.startswith("likelihood") for k in summary["metrics"])
    assert summary["config"]["judge_mode"] == "text"
    assert not (rd / "mt_bench.judge_ratings.jsonl").exists()


def test_explicit_likelihood_with_an_api_judge_fails_before_any_request(tmp_path: Path, capsys) -> None:
    pytest.importorskip("openai")
    with StubServer(behaviour) as stub:
        code = main(["run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "mt_bench",
                     "--judge", "openai:stub", "--judge-base-url", stub.url, "--limit", "2",
                     "--judge-mode", "likelihood", "--out", str(tmp_path / "runs")])
        assert stub.count("/v1/chat/completions") + stub.count("/v1/completions") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--judge-mode likelihood needs a local judge" in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- a tiny random checkpoint judging through the HF adapter ---------------------------------------

@pytest.fixture(scope="module")
def hf_judge(tiny_llama: Path):
    pytest.importorskip("torch")
    from harness.adapters.hf import HFAdapter
    return HFAdapter(ModelSpec("hf", str(tiny_llama), args={"batch_size": 4}), str(tiny_llama), needs_chat=True)


def _judge_in_process(task: MTBench, examples: list[Any], comps: Any, adapter: Any, run_dir: Path) -> list[Any]:
    """What the runner does: both judge passes through the journaled pass, then scoring from them."""
    from harness.run.passes import LazyAdapter, judge_ratings_task, judge_task
    from harness.run.score import ScoreRun

    lazy = LazyAdapter({"kind": "hf", "fingerprint": "tiny"}, lambda: adapter, label="hf:tiny")
    judgments = judge_task(task, examples, comps, lazy, run_dir)
    ratings = judge_ratings_task(task, examples, comps, lazy, run_dir)
    ctx = ScoreRun(run_dir, judgments, HF, ratings)
    try:
        return task.score(examples, comps, ctx)
    finally:
        ctx.close()


def test_likelihood_rating_is_the_expectation_over_the_recorded_distribution(hf_judge, tmp_path: Path) -> None:
    task = MTBench()
    task.use_judge(HF)
    examples = task.load(1)
    comps = answers(examples)
    results = _judge_in_process(task, examples, comps, hf_judge, tmp_path)
    direct = {r.id: r for r in hf_judge.loglikelihood(task.judge_rating_requests(examples, comps))}
    for ex, res in zip(examples, results, strict=True):
        assert res.error is None and set(res.scores) == {
            "likelihood_turn1", "likelihood_turn2", "likelihood_score", "likelihood_score_turns"}
        for turn in (1, 2):
            rec = res.extracted[f"likelihood_turn{turn}"]
            lps = [direct[f"{ex.id}#judge-t{turn}-p{k}"].logprob_sum for k in RATINGS]
            assert rec["logprobs"] == pytest.approx(lps, abs=1e-5)  # the adapter's own numbers, recorded
            top = max(lps)
            z = sum(math.exp(lp - top) for lp in lps)
            assert rec["distribution"] == pytest.approx([math.exp(lp - top) / z for lp in lps], abs=1e-6)
            assert sum(rec["distribution"]) == pytest.approx(1.0)
            expectation = sum(k * p for k, p in zip(RATINGS, rec["distribution"], strict=True))
            assert res.scores[f"likelihood_turn{turn}"] == pytest.approx(expectation, abs=1e-12)
            assert 1.0 <= expectation <= 10.0
    agg = task.aggregate(results)
    pooled = [res.scores[f"likelihood_turn{t}"] for res in results for t in (1, 2)]
    assert agg["likelihood_score"] == pytest.approx(sum(pooled) / len(pooled))
    assert agg["likelihood_judge_errors"] == 0 and agg["likelihood_turn2_judged"] == 1
    assert "score" not in agg and "judge_errors" not in agg  # no text family in likelihood mode
    assert task.describe()["judge_mode"] == "likelihood"


def test_both_modes_are_recorded_apart_never_in_one_mean(hf_judge, tmp_path: Path) -> None:
    task = MTBench(MTBenchOptions(judge_mode="both", judge_max_tokens=4))
    task.use_judge(HF)
    examples = task.load(1)
    results = _judge_in_process(task, examples, answers(examples), hf_judge, tmp_path)
    agg = task.aggregate(results)
    # A random 4-token judge never writes [[N]]: every text judgment is an error, counted and shown,
    # while every turn still has its likelihood rating; neither family's mean sees the other's rows.
    assert agg["judge_errors"] == 2 and math.isnan(agg["score"]) and agg["turn1_judged"] == 0
    assert agg["likelihood_judge_errors"] == 0 and agg["likelihood_turn1_judged"] == 1
    assert math.isfinite(agg["likelihood_score"])
    assert [m.name for m in task.metrics][:1] == ["likelihood_score"] and all(r.error is None for r in results)
    assert {"turn1", "likelihood_turn1"} <= set(results[0].extracted)


# -- journaled and resumable ------------------------------------------------------------------------

@pytest.fixture
def judge_dir(tiny_llama: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "judge"
    shutil.copytree(tiny_llama, copy)
    return copy


def test_killed_judging_resumes_and_a_finished_run_repeats_no_judge_request(
        judge_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    pytest.importorskip("openai")
    from harness.adapters.hf import HFAdapter

    real = HFAdapter.loglikelihood
    scored: list[str] = []
    kill_after: list[int] = [7]

    def counting(self, requests, on_result=None):
        def callback(i, res):
            if on_result is not None:
                on_result(i, res)
            scored.append(res.id)
            if kill_after and len(scored) == kill_after[0]:
                raise KeyboardInterrupt  # killed mid-pass, 7 results journaled
        return real(self, requests, callback)

    monkeypatch.setattr(HFAdapter, "loglikelihood", counting)
    out = tmp_path / "runs"
    with StubServer(behaviour) as stub:
        args = ["run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "mt_bench",
                "--judge", f"hf:{judge_dir}", "--limit", "1", "--out", str(out), "--run-id", "lik"]
        assert main(args) == 130  # interrupted: finished work kept
        rd = out / "lik"
        assert len(list(read_records(rd / "mt_bench.judge_ratings.jsonl"))) == 7
        kill_after.clear()
        assert main(args) == 0
        assert len(scored) == 20 and len(set(scored)) == 20  # the rerun scored only the other 13
        summary = (rd / "summary.json").read_bytes()
        scored.clear()
        stub.reset()
        assert main(args) == 0
        assert scored == [] and stub.count() == 0  # resume: 0 judge requests, 0 model requests
    assert (rd / "summary.json").read_bytes() == summary
    assert main(["score", str(rd)]) == 0  # offline, no judge loaded: the same mode, the same numbers
    assert scored == [] and (rd / "summary.json").read_bytes() == summary
    metrics = json.loads(summary)["tasks"]["mt_bench"]["metrics"]
    assert math.isfinite(metrics["likelihood_score"]) and metrics["likelihood_judge_errors"] == 0
    assert metrics["judge_comparable_to_gpt4"] == 0.0
    report = (rd / "report.md").read_text()
    assert "likelihood_score" in report and "not comparable to published MT-Bench" in report
    assert "likelihood_judge_errors 0" in report
    assert not (rd / "mt_bench.judgments.jsonl").exists()  # no text judging in likelihood mode
