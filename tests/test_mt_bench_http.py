"""MT-Bench judging over real HTTP: the real ``openai`` client against a scripted server.

The stub (tests/openai_stub.py) serves both the model under test and the
judge on 127.0.0.1, telling them apart by the request's ``model`` field. The
model answers ``ANSWER <qid> T<turn>``; the judge finds those markers in its
prompt (a turn-2 prompt holds both answers) and replies with a scripted rating,
so every expected mean is computed by hand. The end-to-end tests run the real
CLI (``python -m harness run``) in a subprocess, SIGKILL it mid-judging, rerun
it, and count the server's hits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_stub import Call, Reply, StubServer

from harness.core.journal import read_records
from harness.core.models import ModelSpec
from harness.core.records import Completion
from harness.run.passes import judge_task
from harness.run.runner import connect_adapter
from harness.run.score import ScoreRun
from harness.tasks import mt_bench
from harness.tasks.mt_bench import MTBench, judge_outcome

pytest.importorskip("openai")

FAST = {"backoff": 0.01, "max_backoff": 0.05, "max_retries": 2, "timeout": 2.0}
MARK = re.compile(r"ANSWER (\d+) T(\d)")
QUESTIONS = {q["turns"][t]: (q["question_id"], t + 1) for q in mt_bench.load_data().questions for t in (0, 1)}
REPO = Path(__file__).resolve().parents[1]


def judged(call: Call) -> tuple[int, int] | None:
    """(question id, turn) a judge call is about: the highest-turn answer marker in its prompt."""
    marks = [(int(q), int(t)) for q, t in MARK.findall(call.content)]
    return max(marks, key=lambda m: m[1]) if marks else None


def server(judge: Callable[[int, int, Call], Reply | str], judge_models: tuple[str, ...] = ("judge",)) -> StubServer:
    def behaviour(call: Call) -> Reply | str:
        if call.body.get("model") in judge_models:
            qid, turn = judged(call)
            return judge(qid, turn, call)
        qid, turn = QUESTIONS[call.content]  # the model under test: turn 1 or turn 2 question
        return f"ANSWER {qid} T{turn}"
    return StubServer(behaviour, models=("model", *judge_models))


def judge_calls(stub: StubServer, model: str = "judge") -> list[tuple[int, int]]:
    return [judged(c) for c in stub.calls if c.body.get("model") == model and c.path == "/v1/chat/completions"]


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# -- in-process: the task's judging pass through OpenAIAdapter -------------------------------------------

SCRIPT: dict[tuple[int, int], Any] = {
    (81, 1): "Fine. Rating: [[8]]", (81, 2): Reply(text="Rating: [[6]]", delay=0.3),  # slow but in time
    (82, 1): Reply(status=429), (82, 2): "Rating: [[3]]",          # 429 on every attempt: fails after retries
    (83, 1): "Rating: [[9]]", (83, 2): "no rating here at all",    # malformed: unparsable
    (84, 2): "[[5]]",
    (85, 1): Reply(raw=b"{not json"), (85, 2): "Rating: [7]",        # malformed body; fallback pattern
}


def _scripted(qid: int, turn: int, call: Call) -> Reply | str:
    if qid == 86:  # 500 twice, then a rating: recovered by the adapter's bounded retries
        return Reply(status=500) if call.attempt <= 2 else "Rating: [[4]]"
    if (qid, turn) == (84, 1):  # first attempt outlives the 2 s timeout; the retry answers
        return Reply(text="Rating: [[2]]", delay=2.5 if call.attempt == 1 else 0.0)
    return SCRIPT[(qid, turn)]


def _completions(examples: list[Any]) -> dict[str, list[Completion]]:
    return {ex.id: [Completion(id=ex.id, texts=(f"ANSWER {ex.data['question_id']} T{t}",)) for t in (1, 2)]
            for ex in examples}


def test_scripted_judge_over_http_gives_hand_computed_means(tmp_path: Path) -> None:
    task = MTBench()
    examples = task.load(6)
    with server(_scripted) as stub:
        spec = ModelSpec("openai", "judge", dict(FAST), stub.url)
        judge = connect_adapter(spec, "judge", chat_template=None, concurrency=4, needs_chat=True)
        try:  # the runner's judge pass, then scoring from its judgments
            judgments = judge_task(task, examples, _completions(examples), judge, tmp_path)
        finally:
            judge.close()
        ctx = ScoreRun(tmp_path, judgments, spec)
        try:
            results = task.score(examples, _completions(examples), ctx)
        finally:
            ctx.close()
    by = {r.id: r for r in results}
    assert by["mt_bench/81"].scores == {"turn1": 8.0, "turn2": 6.0, "score": 7.0, "score_turns": 2.0}
    assert by["mt_bench/82"].scores == {"turn2": 3.0, "score": 3.0, "score_turns": 1.0}
    assert "judge call failed: HTTP 429 after 3 attempts" in by["mt_bench/82"].info["turn_errors"]["turn1"]
    assert by["mt_bench/83"].scores == {"turn1": 9.0, "score": 9.0, "score_turns": 1.0}
    assert by["mt_bench/84"].scores == {"turn1": 2.0, "turn2": 5.0, "score": 3.5, "score_turns": 2.0}
    assert by["mt_bench/85"].scores == {"turn2": 7.0, "score": 7.0, "score_turns": 1.0}
    assert by["mt_bench/86"].scores == {"turn1": 4.0, "turn2": 4.0, "score": 4.0, "score_turns": 2.0}

    agg = task.aggregate(results)
    assert agg["turn1"] == pytest.approx((8 + 9 + 2 + 4) / 4)
    assert agg["turn2"] == pytest.approx((6 + 3 + 5 + 7 + 4) / 5)
    assert agg["score"] == pytest.approx((8 + 9 + 2 + 4 + 6 + 3 + 5 + 7 + 4) / 9)  # valid rows pooled (FastChat)
    assert agg["question_mean"] == pytest.approx((7 + 3 + 9 + 3.5 + 7 + 4) / 6)
    assert (agg["turn1_judged"], agg["turn2_judged"], agg["turn1_total"]) == (4, 5, 6)
    assert agg["turn1_coverage"] == pytest.approx(4 / 6) and agg["turn2_coverage"] == pytest.approx(5 / 6)
    assert agg["judge_errors"] == 3 and agg["errors"] == 0
    assert agg["judge_comparable_to_gpt4"] == 0.0
    # Retries are bounded (max_retries=2: 3 attempts); malformed bodies are not retried.
    calls = judge_calls(stub)
    assert calls.count((82, 1)) == 3 and calls.count((86, 1)) == 3 and calls.count((84, 1)) == 2
    assert calls.count((85, 1)) == 1


# -- end to end: the CLI in a subprocess ----------------------------------------------------------------

LIMIT = 8
SECRET = "sk-test-PLANTED-4f9c1e7a2b"
OTHER_SECRET = "tok-PLANTED-service-9d8e7f6a5b"


def _ratings(qid: int, turn: int) -> int:
    return 1 + (qid * 3 + turn) % 10


def _slow_judge(offset: int = 0, delay: float = 0.25) -> Callable[[int, int, Call], Reply]:
    return lambda qid, turn, call: Reply(text=f"Rating: [[{(_ratings(qid, turn) + offset - 1) % 10 + 1}]]",
                                         delay=delay)


def _cmd(stub: StubServer, out: Path, judge: str = "judge", concurrency: int = 2) -> list[str]:
    return [sys.executable, "-m", "harness", "run", "--model", "openai:model", "--base-url", stub.url,
            "--suite", "mt_bench", "--limit", str(LIMIT), "--judge", f"openai:{judge}", "--judge-base-url", stub.url,
            "--judge-concurrency", str(concurrency), "--judge-args", "backoff=0.01,max_backoff=0.05",
            "--out", str(out), "--run-id", "e2e"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env |= {"OPENAI_API_KEY": SECRET, "MY_SERVICE_TOKEN": OTHER_SECRET, "HF_HUB_OFFLINE": "1",
            "SFT_HARNESS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    return env


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())["tasks"]["mt_bench"]


def _expected(offset: int = 0) -> dict[str, float]:
    qids = [q["question_id"] for q in mt_bench.load_data().questions[:LIMIT]]
    r = {(q, t): (_ratings(q, t) + offset - 1) % 10 + 1 for q in qids for t in (1, 2)}
    return {"turn1": sum(r[q, 1] for q in qids) / LIMIT, "turn2": sum(r[q, 2] for q in qids) / LIMIT,
            "score": sum(r[q, 1] + r[q, 2] for q in qids) / (2 * LIMIT)}


JUDGMENTS = "mt_bench.judgments.jsonl"  # the runner's judge journal: one record per judge request


def _judged(record: dict[str, Any]) -> tuple[int, int]:
    """(question id, turn) of a judge journal record (request ids are "mt_bench/81#judge-t1-r0")."""
    qid, _, rest = record["request_id"].partition("#judge-t")
    return int(qid.split("/")[1]), int(rest.split("-")[0])


def _kill_when_judging(proc: subprocess.Popen[str], journal: Path, timeout: float = 120) -> int:
    """SIGKILL ``proc`` once some judgments are durably journaled and others are not; return how many were."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(1 for r in read_records(journal)
                   if judge_outcome(Completion.from_dict(r["completion"]))["rating"] is not None) \
            if journal.exists() else 0
        if 0 < done < 2 * LIMIT:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return done
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed mid-judging (rc {proc.returncode}): "
                        f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("judging never started")


def test_kill_during_judging_then_rerun_makes_no_duplicate_judge_calls(tmp_path: Path) -> None:
    out, env = tmp_path / "runs", _env(tmp_path)
    run_dir = out / "e2e"
    with server(_slow_judge()) as stub:
        proc = subprocess.Popen(_cmd(stub, out), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _kill_when_judging(proc, run_dir / JUDGMENTS)
        finished = {_judged(r) for r in read_records(run_dir / JUDGMENTS)
                    if judge_outcome(Completion.from_dict(r["completion"]))["rating"] is not None}
        model_calls_before = len(judge_calls(stub, "model"))
        stub.reset()
        _run(_cmd(stub, out), env)
        rejudged = judge_calls(stub)
        assert finished and not finished & set(rejudged), "a journaled judgment was requested again"
        assert len(rejudged) == 2 * LIMIT - len(finished)
        assert judge_calls(stub, "model") == [] and model_calls_before == 2 * LIMIT  # generation fully reused

        summary = _summary(run_dir)
        for key, value in _expected().items():
            assert summary["metrics"][key] == pytest.approx(value), key
        assert summary["metrics"]["turn1_coverage"] == 1.0 and summary["metrics"]["judge_errors"] == 0
        rows = [json.loads(line) for line in (run_dir / "mt_bench.samples.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(f"mt_bench/{q['question_id']}"
                                                      for q in mt_bench.load_data().questions[:LIMIT])

        stub.reset()  # a third run: everything is journaled, nothing is asked again
        _run(_cmd(stub, out), env)
        assert stub.count() == 0


def test_no_api_key_or_secret_lands_in_the_run_directory(tmp_path: Path) -> None:
    out, env = tmp_path / "runs", _env(tmp_path)
    with server(_slow_judge(delay=0.0)) as stub:
        res = _run(_cmd(stub, out, concurrency=8), env)
        assert all(c.authorization == f"Bearer {SECRET}" for c in stub.calls)  # the key really was in use
    files = [p for p in (out / "e2e").rglob("*") if p.is_file()]
    assert {"config.json", "summary.json", "mt_bench.samples.jsonl", JUDGMENTS} <= {p.name for p in files}
    for p in files:
        blob = p.read_bytes()
        for secret in (SECRET, OTHER_SECRET):
            assert secret.encode() not in blob, f"{secret} written to {p}"
    assert SECRET not in res.stdout + res.stderr and OTHER_SECRET not in res.stdout + res.stderr


def test_changing_the_judge_never_mixes_judgments(tmp_path: Path) -> None:
    out, env = tmp_path / "runs", _env(tmp_path)
    run_dir = out / "e2e"

    def two_judges(qid: int, turn: int, call: Call) -> Reply:
        offset = 0 if call.body["model"] == "judge" else 5
        return _slow_judge(offset, delay=0.0)(qid, turn, call)

    with server(two_judges, judge_models=("judge", "judge-b")) as stub:
        _run(_cmd(stub, out, concurrency=8), env)
        first = _summary(run_dir)["metrics"]
        stub.reset()
        _run(_cmd(stub, out, judge="judge-b", concurrency=8), env)
        assert len(judge_calls(stub, "judge-b")) == 2 * LIMIT and judge_calls(stub, "judge") == []
        second = _summary(run_dir)["metrics"]
        stub.reset()
        _run(_cmd(stub, out, concurrency=8), env)
        assert stub.count() == 0  # back to the first judge: its judgments are still there, unmixed
        third = _summary(run_dir)["metrics"]
    assert first["score"] == pytest.approx(_expected()["score"])
    assert second["score"] == pytest.approx(_expected(5)["score"])
    assert third == first
