"""Probe tasks without a model: suites, items, metrics, and the runner's log-likelihood pass.

A toy scorer (no torch) stands in for the engine: it returns a known
log-probability per request and counts what it was sent, so the pooled
metrics, the journal file and the resume are checked exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.options import SharedOptions
from harness.core.records import Example, LoglikelihoodRequest, LoglikelihoodResult, Message, Result
from harness.run import runner
from harness.run.passes import LazyAdapter
from harness.tasks import resolve_suites
from harness.tasks.probes import ProbeCode, ProbeGeneral, ProbeMath, aggregate, last_turn, score_item

# -- suites -----------------------------------------------------------------------------------------

def test_suite_probes_is_math_and_code_and_all_includes_them_but_not_the_file_probe() -> None:
    assert resolve_suites("probes") == ("probe_math", "probe_code")
    everything = resolve_suites("all")
    assert {"gsm8k", "humaneval", "mt_bench", "probe_math", "probe_code"} <= set(everything)
    assert "probe_general" not in everything
    assert resolve_suites("all,probe_general")[-1] == "probe_general"
    with pytest.raises(UsageError, match="choose from: all, probes, gsm8k"):
        resolve_suites("probe")


def test_probe_general_without_a_file_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    code = main(["run", "--model", "hf:some-org/some-model", "--suite", "probe_general",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--probe-general-data PATH" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before any run directory was made


def test_an_openai_endpoint_gets_the_text_probes_of_all_and_refuses_a_chat_probe_by_name(tmp_path: Path,
                                                                                         capsys) -> None:
    from harness.cli import build_parser

    base = ["run", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]
    suites = runner.config_from_args(build_parser().parse_args([*base, "--suite", "all"])).suites
    assert "probe_code" in suites and "probe_math" not in suites  # left out of all, said in the log
    assert main([*base, "--suite", "probes"]) == 2
    err = capsys.readouterr().err.strip()
    assert "probe_math scores chat contexts" in err and "hf:PATH" in err and len(err.splitlines()) == 1


# -- items ----------------------------------------------------------------------------------------

def test_math_probe_scores_the_reference_solution_given_the_question_as_chat() -> None:
    task = ProbeMath()
    (req,) = task.requests(task.load(1), 0, {})
    assert req.is_chat and req.context[0].role == "user" and req.context[0].content.startswith("Janet")
    assert "<<" not in req.continuation and req.continuation.rstrip().endswith("#### 18")
    assert len(task.load()) == 1319 and task.describe()["data_sha256"]


def test_code_probe_scores_the_canonical_solution_after_the_raw_prompt() -> None:
    task = ProbeCode()
    (req,) = task.requests(task.load(1), 0, {})
    assert not req.is_chat and req.context.startswith("from typing import List")
    assert req.continuation.startswith("    for idx, elem in enumerate(numbers):")
    assert len(task.load()) == 164 and not ProbeCode.needs_chat


@pytest.mark.parametrize("fmt, record", [
    ("sharegpt", {"id": "s1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}),
    ("messages", {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4"}]}),
    ("alpaca", {"instruction": "2+2?", "input": "", "output": "4"}),
])
def test_general_probe_scores_the_last_assistant_turn_of_any_format(tmp_path: Path, fmt: str, record: dict) -> None:
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text((json.dumps(record) + "\n") * 2)
    task = ProbeGeneral(ProbeGeneral.Options(data=str(path)))
    reqs = task.requests(task.load(), 0, {})
    assert [r.id for r in reqs] == ["probe_general/0", "probe_general/1"]
    assert reqs[0].continuation == "4" and reqs[0].context[-1] == Message("user", "2+2?")
    assert all(m.role != "assistant" or m.content == "hello" for m in reqs[0].context)


def test_general_probe_says_when_the_format_cannot_be_told(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(UsageError, match="cannot tell the format.*--probe-general-format"):
        ProbeGeneral(ProbeGeneral.Options(data=str(path))).load()


def test_a_conversation_without_a_reply_after_context_is_not_an_item() -> None:
    assert last_turn((Message("assistant", "hi"),), "c") is None
    assert last_turn((Message("user", "q"), Message("assistant", "a"), Message("user", "more?")), "c")["continuation"] == "a"


# -- metrics --------------------------------------------------------------------------------------

def test_metrics_pool_tokens_and_bytes_and_errors_are_counted_not_scored() -> None:
    ex = [Example(id=f"p/{i}") for i in range(3)]
    results = [score_item(ex[0], LoglikelihoodResult("p/0", logprob_sum=-2.0, n_tokens=1, n_bytes=4, is_greedy=True)),
               score_item(ex[1], LoglikelihoodResult("p/1", logprob_sum=-6.0, n_tokens=3, n_bytes=8, is_greedy=False)),
               score_item(ex[2], LoglikelihoodResult("p/2", error="context too long"))]
    assert results[2].error == "scoring failed: context too long" and results[2].scores == {}
    m = aggregate(results)
    assert (m["n"], m["scored"], m["errors"], m["tokens"], m["bytes"]) == (3, 2, 1, 4, 12)
    assert m["nll"] == pytest.approx(8.0 / 4)  # total NLL over total tokens, not the mean of per-item means
    assert m["bits_per_byte"] == pytest.approx(8.0 / math.log(2) / 12)
    assert m["greedy"] == 0.5
    specs = {s.name: s for s in ProbeMath.metrics}
    assert not specs["nll"].higher_is_better and not specs["bits_per_byte"].higher_is_better
    assert specs["greedy"].higher_is_better and specs["nll"].primary


def test_a_result_without_numbers_is_an_error() -> None:
    res = score_item(Example(id="p/0"), LoglikelihoodResult("p/0", logprob_sum=-1.0, n_tokens=0, n_bytes=0))
    assert isinstance(res, Result) and res.error and not res.scores


# -- the runner's log-likelihood pass ------------------------------------------------------------------

@dataclass
class ToyScorer:
    """logprob = -(len(continuation) / 10) per request; counts what it is sent."""

    sent: list[str] = field(default_factory=list)
    name: str = "toy"

    def describe(self) -> dict[str, Any]:
        return {"kind": "toy", "fingerprint": "toy-1"}

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], on_result: Callable | None = None) -> list:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            res = LoglikelihoodResult(id=r.id, logprob_sum=-len(r.continuation) / 10, n_tokens=len(r.continuation),
                                      n_bytes=len(r.continuation.encode()), is_greedy=False)
            if on_result:
                on_result(i, res)
            out.append(res)
        return out


def connect_toy(scorer: ToyScorer, builds: list[int]) -> runner.Connect:
    def connect(spec: ModelSpec, role: str, **_: Any) -> LazyAdapter:
        def build() -> ToyScorer:
            builds.append(1)
            return scorer
        return LazyAdapter({"kind": "toy", "fingerprint": "toy-1"}, build, label="toy")
    return connect


def test_runner_sends_probe_requests_through_the_loglikelihood_pass_and_resumes(tmp_path: Path, capsys) -> None:
    cfg = runner.RunConfig(model=ModelSpec(kind="hf", target="toy/model"),
                           suites=("probe_math", "probe_code"), out=tmp_path, shared=SharedOptions(limit=3))
    scorer, builds = ToyScorer(), []
    run_dir, summary = runner.run_with_summary(cfg, connect_toy(scorer, builds))
    assert len(scorer.sent) == 6 and builds == [1]
    names = {p.name for p in run_dir.iterdir()}
    assert {"probe_math.loglikelihood.jsonl", "probe_code.loglikelihood.jsonl", "probe_math.samples.jsonl"} <= names
    assert not any(n.endswith(".generations.jsonl") for n in names)
    assert summary["tasks"]["probe_math"]["metrics"]["nll"] == pytest.approx(0.1)
    row = json.loads((run_dir / "probe_code.samples.jsonl").read_text().splitlines()[0])
    assert set(row["scores"]) == {"nll", "tokens", "bpb", "bytes", "greedy"} and row["requests"][0]["continuation"]

    again, builds2 = ToyScorer(), []
    runner.run_with_summary(cfg, connect_toy(again, builds2))
    assert again.sent == [] and builds2 == []  # every result journaled: nothing sent, no model built
    assert main(["score", str(run_dir)]) == 0  # offline re-scoring reads the log-likelihood journal
    capsys.readouterr()
