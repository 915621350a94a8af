"""Ctrl-C during HumanEval execution (issue 12 item 6): `harness run` stops at once, keeps what finished.

A real SIGINT goes to a `harness run --suite humaneval` subprocess (scripted OpenAI stub, 12 programs
that each sleep 0.5 s, one worker) once two verdicts are journaled. Before the fix the interrupt waited
for every queued program; now the run exits 130 within seconds, the journal keeps the finished
verdicts (none of them an interrupted program recorded as a failure), and the rerun executes only
the rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from openai_stub import Call, Reply, StubServer

from harness.tasks.humaneval import load_problems

N = 12


def solver(call: Call) -> Reply:
    p = next(p for p in load_problems()[:N] if p["prompt"] in call.content)
    return Reply(text=f"```python\nimport time\ntime.sleep(0.5)\n{p['prompt']}{p['canonical_solution']}\n```")


def command(url: str, out: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFT_HARNESS_CACHE": str(out / "cache")}
    env.pop("OPENAI_BASE_URL", None)
    cmd = [sys.executable, "-m", "harness", "run", "--model", "openai:stub", "--base-url", url, "--suite",
           "humaneval", "--allow-code-execution", "--exec-workers", "1", "--limit", str(N), "--out", str(out / "runs")]
    return cmd, env


def journaled(out: Path) -> list[dict]:
    files = list((out / "runs").glob("*/humaneval.exec.jsonl"))
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()] if files else []


def test_sigint_during_execution_stops_promptly_and_the_rerun_runs_only_the_rest(tmp_path: Path) -> None:
    with StubServer(solver) as stub:
        cmd, env = command(stub.url, tmp_path)
        # Ctrl-C's default action in the child even where this runs as a background job (which ignores SIGINT)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while len(journaled(tmp_path)) < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=60)
            stopped_in = time.monotonic() - t0
        finally:
            proc.kill()
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err
        assert stopped_in < 3.0, f"{stopped_in:.1f} s to stop with {N} programs of 0.5 s queued"
        done = journaled(tmp_path)
        assert 2 <= len(done) < N
        assert {r["verdict"]["status"] for r in done} == {"passed"}, done  # no interrupted program as a failure

        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(journaled(tmp_path)) == N  # the finished verdicts were not executed again
        summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
        assert summary["tasks"]["humaneval"]["metrics"]["pass@1"] == 1.0
