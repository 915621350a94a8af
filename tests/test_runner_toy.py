"""The runner with a toy task and an echo adapter: no torch, no server, every count checked.

The toy task asks for its answer back ("say 7"); the echo adapter replies with
the last word of the prompt, so the expected scores are known exactly, and it
counts every request it is sent and every time it is built. These tests pin
the run pipeline's contracts: generation is keyed on the model's output
identity and the full request (never the task version), a fully journaled
rerun builds no model, ``harness score`` reproduces ``summary.json`` byte for
byte, the judge is a pass the runner owns, and a run with nothing scored exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.core.models import ModelSpec
from harness.core.options import Options, SharedOptions
from harness.core.records import Completion, Example, Message, MetricSpec, Request, Result
from harness.run import runner
from harness.run.passes import LazyAdapter
from harness.run.score import exit_code

ANSWERS = ("7", "12", "3", "40")


@dataclass(frozen=True)
class ToyOptions(Options):
    prefix = "toy"


class ToyTask:
    """Say the number back. Item 2's expected answer is deliberately wrong, so the mean is 0.75."""

    name = "toy"
    version = "1"
    turns = 1
    Options = ToyOptions
    needs_chat = True
    needs_judge = False
    needs_code_execution = False
    default_max_drop = 1.0
    metrics = (MetricSpec("exact", key="exact", primary=True),)

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def load(self, limit: int | None = None) -> list[Example]:
        gold = ("7", "12", "4", "40")
        items = [Example(id=f"toy/{i}", data={"say": a, "gold": g}) for i, (a, g) in enumerate(zip(ANSWERS, gold, strict=True))]
        return items[:limit] if limit else items

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Completion]]) -> list[Request]:
        return [Request(id=ex.id, messages=(Message("user", f"say {ex.data['say']}"),), max_tokens=4)
                for ex in examples]

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: Any) -> list[Result]:
        out = []
        for ex in examples:
            comp = completions[ex.id][0]
            if comp.error:
                out.append(Result(id=ex.id, error=f"generation failed: {comp.error}"))
            else:
                out.append(Result(id=ex.id, scores={"exact": float(comp.texts[0] == ex.data["gold"])}))
        return out

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        scored = [r.scores["exact"] for r in results if r.error is None]
        return {"exact": sum(scored) / len(scored) if scored else float("nan")}

    def describe(self) -> dict[str, Any]:
        return {"toy": True}


@dataclass
class Echo:
    """An adapter that answers with the last word of the last user message (or fails every request)."""

    fail: bool = False
    sent: list[str] = field(default_factory=list)
    name: str = "echo"

    def describe(self) -> dict[str, Any]:
        return {"kind": "echo", "fingerprint": "echo-1"}

    def generate(self, requests: Sequence[Request], on_result: Callable | None = None) -> list[Completion]:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            text = (r.messages[-1].content if r.messages else r.prompt or "").split()[-1]
            comp = Completion(id=r.id, error="HTTP 500 after 3 attempts") if self.fail else \
                Completion(id=r.id, texts=(text,))
            if on_result:
                on_result(i, comp)
            out.append(comp)
        return out


@dataclass
class Engines:
    """The ``connect`` the tests hand the runner: one Echo per role, and how often each was built."""

    model: Echo = field(default_factory=Echo)
    judge: Any = None
    builds: dict[str, int] = field(default_factory=lambda: {"model": 0, "judge": 0})
    identity: dict[str, Any] = field(default_factory=lambda: {"kind": "echo", "fingerprint": "echo-1"})
    judge_identity: dict[str, Any] | None = None

    def __call__(self, spec: ModelSpec, role: str, **_: Any) -> LazyAdapter:
        def build() -> Any:
            self.builds[role] += 1
            return self.model if role == "model" else self.judge

        base = self.judge_identity if role == "judge" and self.judge_identity else self.identity
        ident = {**base, "role": role, "target": spec.target}
        return LazyAdapter(ident, build, label=f"{spec.kind}:{spec.target}")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``toy`` resolves to ToyTask wherever the runner (or `harness score`) builds tasks."""
    import harness.tasks as registry

    monkeypatch.setitem(registry.REGISTRY, "toy", ToyTask)
    registry.task_class.cache_clear()
    yield
    registry.task_class.cache_clear()


def config(out: Path, suites: tuple[str, ...] = ("toy",), limit: int | None = None, **kw: Any) -> runner.RunConfig:
    return runner.RunConfig(model=ModelSpec(kind="openai", target="echo", base_url="http://127.0.0.1:9/v1"),
                            suites=suites, out=out, shared=SharedOptions(limit=limit), **kw)


def summary_bytes(run_dir: Path) -> bytes:
    return (run_dir / "summary.json").read_bytes()


# -- generation is keyed on the model and the request -------------------------------------------------

def test_toy_run_writes_every_stage_file_with_known_scores(toy: None, tmp_path: Path) -> None:
    engines = Engines()
    run_dir, summary = runner.run_with_summary(config(tmp_path), engines)
    assert engines.model.sent == ["toy/0", "toy/1", "toy/2", "toy/3"]
    assert {"config.json", "summary.json", "report.md", "toy.generations.jsonl", "toy.samples.jsonl"} <= {
        p.name for p in run_dir.iterdir()}
    assert summary["tasks"]["toy"]["metrics"] == {"exact": 0.75}
    assert summary["tasks"]["toy"]["n"] == 4 and summary["tasks"]["toy"]["errors"] == 0
    rows = [json.loads(line) for line in (run_dir / "toy.samples.jsonl").read_text().splitlines()]
    assert [r["completions"][0]["texts"] for r in rows] == [["7"], ["12"], ["3"], ["40"]]
    assert json.loads((run_dir / "config.json").read_text())["identity"]["model"]["fingerprint"] == "echo-1"


def test_changing_a_task_version_regenerates_nothing(toy: None, tmp_path: Path, monkeypatch) -> None:
    engines = Engines()
    run_dir, _ = runner.run_with_summary(config(tmp_path, run_id="toy-run"), engines)
    monkeypatch.setattr(ToyTask, "version", "2")  # a scorer fix
    _, summary = runner.run_with_summary(config(tmp_path, run_id="toy-run"), engines)
    assert len(engines.model.sent) == 4, "the new task version regenerated completions"
    assert summary["tasks"]["toy"]["version"] == "2"


def test_fully_journaled_rerun_loads_no_model(toy: None, tmp_path: Path) -> None:
    engines = Engines()
    run_dir, first = runner.run_with_summary(config(tmp_path), engines)
    assert engines.builds["model"] == 1
    again = Engines()
    run_dir2, second = runner.run_with_summary(config(tmp_path), again)
    assert run_dir2 == run_dir
    assert again.builds["model"] == 0 and again.model.sent == []
    assert second == first


def test_a_changed_model_identity_regenerates(toy: None, tmp_path: Path) -> None:
    runner.run_with_summary(config(tmp_path, run_id="r"), Engines())
    other = Engines(identity={"kind": "echo", "fingerprint": "echo-2"})  # overwritten checkpoint
    runner.run_with_summary(config(tmp_path, run_id="r"), other)
    assert len(other.model.sent) == 4


def test_failed_completions_are_retried_not_reused(toy: None, tmp_path: Path) -> None:
    failing = Engines(model=Echo(fail=True))
    runner.run_with_summary(config(tmp_path, run_id="r"), failing)
    healthy = Engines()
    run_dir, summary = runner.run_with_summary(config(tmp_path, run_id="r"), healthy)
    assert len(healthy.model.sent) == 4 and summary["tasks"]["toy"]["errors"] == 0
    assert not list(run_dir.glob("summary.replaced-*"))  # a resumed run finishing its own work replaces quietly


def test_a_rerun_under_a_new_task_version_keeps_the_old_summary(toy: None, tmp_path: Path, monkeypatch) -> None:
    run_dir, _ = runner.run_with_summary(config(tmp_path, run_id="r"), Engines())
    before = summary_bytes(run_dir)
    monkeypatch.setattr(ToyTask, "version", "2")
    runner.run_with_summary(config(tmp_path, run_id="r"), Engines())
    (kept,) = run_dir.glob("summary.replaced-*.json")
    assert kept.read_bytes() == before


# -- `harness score RUN_DIR` ----------------------------------------------------------------------------

def test_score_reproduces_summary_byte_for_byte(toy: None, tmp_path: Path, capsys) -> None:
    run_dir, _ = runner.run_with_summary(config(tmp_path), Engines())
    before = summary_bytes(run_dir)
    samples = (run_dir / "toy.samples.jsonl").read_bytes()
    (run_dir / "summary.json").touch()
    assert main(["score", str(run_dir)]) == 0
    assert summary_bytes(run_dir) == before
    assert (run_dir / "toy.samples.jsonl").read_bytes() == samples
    assert not list(run_dir.glob("summary.replaced-*"))


def test_score_with_a_new_scorer_version_needs_replace(toy: None, tmp_path: Path, monkeypatch, capsys) -> None:
    run_dir, _ = runner.run_with_summary(config(tmp_path), Engines())
    before = summary_bytes(run_dir)
    monkeypatch.setattr(ToyTask, "version", "2")
    capsys.readouterr()
    assert main(["score", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "toy version 1 -> 2" in err and "--replace" in err and len(err.strip().splitlines()) == 1
    assert summary_bytes(run_dir) == before  # nothing was written
    assert main(["score", str(run_dir), "--replace"]) == 0
    assert json.loads(summary_bytes(run_dir))["tasks"]["toy"]["version"] == "2"
    (kept,) = run_dir.glob("summary.replaced-*.json")
    assert kept.read_bytes() == before
    assert json.loads((run_dir / "config.json").read_text())["tasks"]["toy"]["version"] == "2"


def test_score_refuses_a_run_that_did_not_finish_generating(toy: None, tmp_path: Path, capsys) -> None:
    run_dir, _ = runner.run_with_summary(config(tmp_path), Engines())
    (run_dir / "toy.generations.jsonl").write_text("")
    assert main(["score", str(run_dir)]) == 2
    assert "no journaled completion" in capsys.readouterr().err


def test_score_on_a_missing_or_file_path_says_which(tmp_path: Path, capsys) -> None:
    assert main(["score", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["score", str(tmp_path / "f")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err


# -- exit codes --------------------------------------------------------------------------------------------

def test_a_task_with_no_scored_item_exits_1_and_says_so_last(toy: None, tmp_path: Path, capsys) -> None:
    run_dir, summary = runner.run_with_summary(config(tmp_path), Engines(model=Echo(fail=True)))
    capsys.readouterr()
    assert exit_code(run_dir, summary) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no item of toy was scored" in last and str(run_dir) in last
    assert len(list((run_dir / "toy.generations.jsonl").read_text().splitlines())) == 4  # work kept


# -- the judge is a pass the runner owns ---------------------------------------------------------------------

class Judge(Echo):
    """Rates every answer [[6]] and counts its calls."""

    def generate(self, requests: Sequence[Request], on_result: Callable | None = None) -> list[Completion]:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            comp = Completion(id=r.id, texts=("Fine. Rating: [[6]]",))
            if on_result:
                on_result(i, comp)
            out.append(comp)
        return out


def test_mt_bench_is_judged_through_the_runners_pass(tmp_path: Path, capsys) -> None:
    from harness.core.journal import read_records

    engines = Engines(judge=Judge())
    cfg = config(tmp_path, suites=("mt_bench",), run_id="mt", limit=3,
                 judge=runner.JudgeOptions(spec=ModelSpec(kind="openai", target="judge", base_url="http://j:1/v1")))
    run_dir, summary = runner.run_with_summary(cfg, engines)
    assert len(engines.model.sent) == 6 and len(engines.judge.sent) == 6  # 3 questions x 2 turns
    assert summary["tasks"]["mt_bench"]["metrics"]["score"] == 6.0
    assert summary["tasks"]["mt_bench"]["judge"] == "openai:judge"
    assert len(list(read_records(run_dir / "mt_bench.judgments.jsonl"))) == 6
    before = summary_bytes(run_dir)

    again = Engines(judge=Judge())
    runner.run_with_summary(cfg, again)
    assert again.builds == {"model": 0, "judge": 0}  # 0 repeated generations or judge calls
    assert summary_bytes(run_dir) == before
    assert main(["score", str(run_dir)]) == 0 and summary_bytes(run_dir) == before

    other = Engines(judge=Judge(), judge_identity={"kind": "echo", "fingerprint": "another-judge"})
    runner.run_with_summary(cfg, other)  # another judge: re-judged, never reused; generations reused
    assert len(other.judge.sent) == 6 and other.model.sent == []


# -- the same pass helper for log-likelihood requests -----------------------------------------------------

def test_loglikelihood_requests_go_through_the_same_journaled_pass(tmp_path: Path) -> None:
    from harness.core.journal import Journal
    from harness.core.records import LoglikelihoodRequest, LoglikelihoodResult
    from harness.run.passes import LOGLIKELIHOOD, run_pass

    calls: list[str] = []

    def loglikelihood(requests: Sequence[LoglikelihoodRequest], on_result: Callable | None = None) -> list:
        out = []
        for i, r in enumerate(requests):
            calls.append(r.id)
            res = LoglikelihoodResult(id=r.id, logprob_sum=-float(len(r.continuation)), n_tokens=1,
                                      n_bytes=len(r.continuation), is_greedy=True)
            if on_result:
                on_result(i, res)
            out.append(res)
        return out

    reqs = [LoglikelihoodRequest(id=f"p/{i}", context="The answer is", continuation=f" {i * 11}") for i in range(3)]
    identity = {"kind": "toy-scorer"}
    for _ in range(2):
        with Journal(tmp_path / "p.loglikelihood.jsonl") as journal:
            results = run_pass(lambda: loglikelihood, reqs, journal, identity, LOGLIKELIHOOD, "probe", "toy")
    assert calls == ["p/0", "p/1", "p/2"]  # the second pass was served from the journal
    assert [r.logprob_sum for r in results] == [-2.0, -3.0, -3.0] and [r.id for r in results] == ["p/0", "p/1", "p/2"]
