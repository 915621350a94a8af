"""docs/adding-a-benchmark.md, checked: its task file, registered from outside the package, runs end to end.

The code block of the walkthrough is written to a module in a temporary folder
(outside the package) and registered the two ways the page shows: with
``harness.tasks.register`` in process, and as an installed distribution's
``sft_harness.tasks`` entry point seen by a fresh ``harness`` process. Both runs
use an adapter that needs no torch: an in-process one that answers the sums
(wrong on purpose for odd first operands, so the expected score is known), and
the scripted OpenAI-compatible stub server doing the same over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from openai_stub import StubServer, answers

from harness.cli import build_parser
from harness.core.models import ModelSpec
from harness.core.records import Completion, Request
from harness.run import runner
from harness.run.passes import LazyAdapter

DOC = Path(__file__).parent.parent / "docs" / "adding-a-benchmark.md"
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


def walkthrough_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return next(b for b in blocks if "class Addition" in b)


def reply(content: str) -> str:
    """The right sum when the first operand is even, one too many when it is odd."""
    a, b = map(int, QUESTION.search(content).groups())
    return f"The answer is {a + b + (a % 2)}."


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "addition_task.py").write_text(walkthrough_code())
    return d


@pytest.fixture
def registered(module_dir: Path, monkeypatch) -> None:
    import harness.tasks as registry

    monkeypatch.syspath_prepend(str(module_dir))
    registry.register("addition", "addition_task:Addition")
    yield
    del registry.REGISTRY["addition"]
    registry.task_class.cache_clear()


class Sums:
    """An adapter that answers with ``reply``: no torch, no server."""

    name = "sums"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "sums", "fingerprint": "sums-1"}

    def generate(self, requests: Sequence[Request], on_result: Callable | None = None) -> list[Completion]:
        out = []
        for i, r in enumerate(requests):
            self.sent.append(r.id)
            out.append(Completion(id=r.id, texts=(reply(r.messages[-1].content),)))
            if on_result:
                on_result(i, out[-1])
        return out


def expected_exact(items: int, seed: int = 1234) -> float:
    import random

    rng = random.Random(seed)
    firsts = []
    for _ in range(items):
        firsts.append(rng.randint(0, 99))
        rng.randint(0, 99)
    return sum(a % 2 == 0 for a in firsts) / items


def test_walkthrough_task_runs_end_to_end_in_process(registered: None, tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--model", "openai:sums", "--base-url", "http://127.0.0.1:9/v1",
                                      "--suite", "addition", "--addition-items", "12", "--out", str(tmp_path / "runs")])
    cfg = runner.config_from_args(args)
    model = Sums()

    def connect(spec: ModelSpec, role: str, **_: Any) -> LazyAdapter:
        return LazyAdapter({"kind": "sums", "fingerprint": "sums-1"}, lambda: model, label="sums")

    run_dir, summary = runner.run_with_summary(cfg, connect)
    task = summary["tasks"]["addition"]
    assert len(model.sent) == 12 and task["n"] == 12 and task["errors"] == 0
    assert task["metrics"]["exact"] == pytest.approx(expected_exact(12))
    assert json.loads((run_dir / "config.json").read_text())["task_options"]["addition"] == \
        {"items": 12, "max_operand": 99}


def test_walkthrough_options_are_checked_like_any_task(registered: None) -> None:
    from harness.core.errors import UsageError

    for bad, needle in (("0", "--addition-items must be >= 1 and <= 10000, got 0"),
                        ("many", "--addition-items 'many' is not an integer")):
        args = build_parser().parse_args(["run", "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1",
                                          "--suite", "addition", "--addition-items", bad])
        with pytest.raises(UsageError, match=needle):
            runner.config_from_args(args)


def _install_entry_point(site: Path) -> None:
    dist = site / "my_benchmarks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-benchmarks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sft_harness.tasks]\naddition = addition_task:Addition\n")


def test_entry_point_task_runs_from_the_command_line(module_dir: Path, tmp_path: Path) -> None:
    _install_entry_point(module_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module_dir), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "SFT_HARNESS_CACHE": str(tmp_path / "cache"), "OPENAI_API_KEY": "sk-test"}
    env.pop("OPENAI_BASE_URL", None)

    def harness(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *argv], env=env, capture_output=True, text=True,
                              timeout=120)

    listed = harness("tasks")
    assert listed.returncode == 0 and re.search(r"^addition\s+v1\s+Add two integers", listed.stdout, re.M)
    assert "addition options" in harness("run", "--help").stdout

    bad = harness("run", "--model", "openai:stub", "--base-url", "http://127.0.0.1:9/v1", "--suite", "addition",
                  "--addition-items", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "harness: error: --addition-items must be >= 1 and <= 10000, got 0"]

    with StubServer(answers(reply)) as stub:
        res = harness("run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "addition",
                      "--addition-items", "8", "--out", str(tmp_path / "runs"))
        assert res.returncode == 0, res.stderr[-2000:]
        assert stub.count("/v1/chat/completions") == 8
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"]["addition"]["metrics"]["exact"] == pytest.approx(expected_exact(8))
