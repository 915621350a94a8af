"""`harness run --suite humaneval` end to end against the scripted OpenAI stub.

The stub answers the first five problems (instruct mode) with: the full
canonical function, the canonical body only, a wrong answer that prints the
harness's API key, ``os._exit(0)``, and an infinite loop. Expected: pass@1 2/5,
one timeout, no secret in any file, and a rerun that neither regenerates nor
re-executes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_stub import Call, Reply, StubServer

from harness.tasks.humaneval import load_problems

SECRET = "sk-planted-humaneval-Secret-0123456789"


def solver(call: Call) -> Reply:
    problems = load_problems()[:5]
    i = next(i for i, p in enumerate(problems) if p["prompt"] in call.content)
    p = problems[i]
    fence = "```python\n{}\n```"
    replies = [
        "Sure!\n" + fence.format(p["prompt"] + p["canonical_solution"]),
        fence.format(p["canonical_solution"]),
        fence.format(f"import os\ndef {p['entry_point']}(*args):\n    print(os.environ.get('OPENAI_API_KEY'))\n"
                     "    return None"),
        fence.format("import os\nos._exit(0)"),
        fence.format(f"def {p['entry_point']}(*args):\n    while True:\n        pass"),
    ]
    return Reply(text=replies[i])


def harness_run(url: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "HF_HUB_OFFLINE": "1", "SFT_HARNESS_CACHE": str(out / "cache")}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("HARNESS_ALLOW_CODE_EXECUTION", None)
    cmd = [sys.executable, "-m", "harness", "run", "--model", "openai:stub", "--base-url", url, "--suite", "humaneval",
           "--allow-code-execution", "--exec-timeout", "2", "--limit", "5", "--out", str(out / "runs")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two full CLI runs: ~40-55 s on a loaded 2-core machine
def test_run_scores_sandboxed_and_resumes_without_reexecution(tmp_path: Path) -> None:
    with StubServer(solver) as stub:
        first = harness_run(stub.url, tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        (d,) = (tmp_path / "runs").iterdir()
        summary = json.loads((d / "summary.json").read_text())["tasks"]["humaneval"]
        assert summary["metrics"]["pass@1"] == pytest.approx(2 / 5)
        assert summary["metrics"]["timed_out"] == 1 and summary["metrics"]["sandbox_violations"] == 0
        rows = [json.loads(line) for line in (d / "humaneval.samples.jsonl").read_text().splitlines()]
        verdicts = [r["info"]["samples"][0]["verdict"] for r in rows]
        assert verdicts[:2] == ["passed", "passed"]
        assert verdicts[2].startswith("failed: AssertionError")
        assert verdicts[3] == "failed: exited with code 0 before the tests finished"
        assert verdicts[4] == "timed out"
        config = json.loads((d / "config.json").read_text())["tasks"]["humaneval"]
        assert config["prompt_mode"] == "instruct" and config["isolation"] in ("bubblewrap", "rlimits-only")
        report = (d / "report.md").read_text()
        assert "pass@1" in report and "timed_out 1" in report

        executed = (d / "humaneval.exec.jsonl").read_text().count("\n")
        calls = stub.count("/v1/chat/completions")
        again = harness_run(stub.url, tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert stub.count("/v1/chat/completions") == calls == 5
        assert (d / "humaneval.exec.jsonl").read_text().count("\n") == executed == 5
    for f in d.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f"secret leaked into {f}"
