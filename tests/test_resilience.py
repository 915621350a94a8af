"""Runs that survive: SIGKILL at random moments, then resume; secrets never reach a file.

The model under test and the MT-Bench judge are both served by the scripted
stub on 127.0.0.1 (tests/openai_stub.py) with a small per-call latency, so a
whole run takes a few seconds and kills land during generation and judging.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_stub import Call, Reply, StubServer, echo_text

SECRET = "sk-planted-Resilience-9876543210"
HF_SECRET = "hf_plantedTokenValue0123456789"
LIMIT = 10
JUDGE_MARK = "[[rating]]"  # every MT-Bench judge prompt asks for this format


def behaviour(call: Call) -> Reply:
    system = " ".join(m.get("content", "") for m in call.body.get("messages", ()) if m.get("role") == "system")
    if JUDGE_MARK in system or JUDGE_MARK in call.content:
        rating = int(hashlib.sha256(call.content.encode()).hexdigest()[:4], 16) % 10 + 1
        return Reply(text=f"The answer is fine. Rating: [[{rating}]]", delay=0.05)
    return Reply(text=echo_text(call.content), delay=0.05)


def start(stub: StubServer, out: Path, run_id: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "HF_TOKEN": HF_SECRET, "SFT_HARNESS_CACHE": str(out / "cache")}
    env.pop("OPENAI_BASE_URL", None)
    cmd = [sys.executable, "-m", "harness", "run", "--model", "openai:stub", "--base-url", stub.url,
           "--suite", "gsm8k,mt_bench", "--judge", "openai:stub", "--judge-base-url", stub.url, "--limit", str(LIMIT),
           "--concurrency", "2", "--judge-concurrency", "2", "--out", str(out / "runs"), "--run-id", run_id, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr


def metrics(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {name: task["metrics"] for name, task in summary["tasks"].items()}


def sample_ids(run_dir: Path, task: str) -> list[str]:
    return [json.loads(line)["id"] for line in (run_dir / f"{task}.samples.jsonl").read_text().splitlines()]


def journal_lines(run_dir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in run_dir.glob("*.jsonl") if "samples" not in p.name)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    with StubServer(behaviour) as stub:
        finish(start(stub, tmp_path, "reference"))
        reference = metrics(tmp_path / "runs" / "reference")
        unique_calls = len(stub.hits)
        stub.reset()

        # Kill at random moments *while work is landing*: wait until 1-3 more records
        # were journaled (plus a random few ms), so kills fall inside generation and
        # judging rather than in interpreter start-up.
        rng = random.Random(20261122)
        killed = tmp_path / "runs" / "killed"
        kills = 0
        for _ in range(20):
            before = journal_lines(killed) if killed.exists() else 0
            target = before + rng.randint(1, 3)
            proc = start(stub, tmp_path, "killed")
            while proc.poll() is None and (not killed.exists() or journal_lines(killed) < target):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
        finish(start(stub, tmp_path, "killed"))

    assert kills >= 15, f"only {kills} kills landed before the run finished"
    for task in ("gsm8k", "mt_bench"):
        ids = sample_ids(killed, task)
        assert len(ids) == len(set(ids)) == LIMIT, f"{task}: every item exactly once"
    assert metrics(killed) == reference
    # Work journaled before a kill is never redone: repeats come only from calls in flight
    # at a kill (at most `concurrency` of them per kill), never from whole reruns.
    repeats = sum(stub.hits.values()) - len(stub.hits)
    assert len(stub.hits) == unique_calls
    assert repeats <= kills * 2, f"{repeats} repeated calls over {kills} kills"


def test_no_secret_in_any_file_a_run_writes(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    extra = ("--suite", "gsm8k,mt_bench")
    with StubServer(behaviour) as stub:
        proc = start(stub, tmp_path, "secrets", *extra)
        stdout, stderr = finish(proc)
        assert any(c.authorization and SECRET in c.authorization for c in stub.calls)  # the key did reach the server
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(files) >= 6
    for path in files:
        blob = path.read_bytes()
        assert SECRET.encode() not in blob, path
        assert HF_SECRET.encode() not in blob, path
    assert SECRET not in stdout + stderr and HF_SECRET not in stdout + stderr


def test_a_finished_run_rerun_makes_no_model_or_judge_call(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    with StubServer(behaviour) as stub:
        finish(start(stub, tmp_path, "again"))
        summary = (tmp_path / "runs" / "again" / "summary.json").read_bytes()
        assert stub.count() > 0
        stub.reset()
        finish(start(stub, tmp_path, "again"))
        assert stub.count() == 0, "a journaled generation or judgment was requested again"
    assert (tmp_path / "runs" / "again" / "summary.json").read_bytes() == summary
