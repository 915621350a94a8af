"""`harness score RUN_DIR`: the score stage re-run from a finished run's files, with no model.

Byte for byte on real runs (a stub-served GSM8K + MT-Bench run with its judge,
and a tiny HF checkpoint), refusal of runs that recorded no identity (a committed
example run with its identity removed, as the first build wrote them), and the lock shared with `harness run`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from openai_stub import Call, Reply, StubServer, echo_text

from harness.cli import main
from harness.run.rundir import open_run_dir

REPO = Path(__file__).resolve().parent.parent


def behaviour(call: Call) -> Reply:
    system = " ".join(m.get("content", "") for m in call.body.get("messages", ()) if m.get("role") == "system")
    if "[[rating]]" in system or "[[rating]]" in call.content:
        return Reply(text=f"Rating: [[{int(hashlib.sha256(call.content.encode()).hexdigest()[:4], 16) % 10 + 1}]]")
    return Reply(text=echo_text(call.content))


@pytest.fixture
def stub_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("SFT_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    with StubServer(behaviour) as stub:
        assert main(["run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "gsm8k,mt_bench",
                     "--judge", "openai:stub", "--judge-base-url", stub.url, "--limit", "3",
                     "--out", str(out), "--run-id", "r"]) == 0
    return out / "r"  # the server is gone from here on: scoring needs none


def test_score_reproduces_a_judged_run_byte_for_byte_with_no_server(stub_run: Path, capsys) -> None:
    files = ("summary.json", "gsm8k.samples.jsonl", "mt_bench.samples.jsonl")
    before = {name: (stub_run / name).read_bytes() for name in files}
    assert main(["score", str(stub_run)]) == 0
    assert {name: (stub_run / name).read_bytes() for name in files} == before
    assert "mt_bench" in capsys.readouterr().out  # the run's report is printed again


def test_score_without_the_judge_journal_reports_unjudged_turns(stub_run: Path, capsys) -> None:
    (stub_run / "mt_bench.judgments.jsonl").unlink()
    assert main(["score", str(stub_run), "--replace"]) == 1  # nothing judged: no scored item, work kept
    assert "no item of mt_bench was scored" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(stub_run.glob("summary.replaced-*.json"))


def test_score_refuses_a_run_directory_in_use(stub_run: Path, capsys) -> None:
    with open_run_dir(stub_run.parent, stub_run.name):
        assert main(["score", str(stub_run)]) == 2
    assert f"is in use by harness pid {os.getpid()}" in capsys.readouterr().err


def test_runs_that_recorded_no_identity_are_refused_with_the_fix(tmp_path: Path, capsys) -> None:
    old = tmp_path / "smollm2-0shot"
    shutil.copytree(REPO / "reports" / "example" / "evals" / "smollm2-0shot", old)
    config = json.loads((old / "config.json").read_text())
    del config["identity"]  # as the first build wrote it: no model identity the journal keys are made of
    (old / "config.json").write_text(json.dumps(config))
    summary = (old / "summary.json").read_bytes()
    assert main(["score", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rerun `harness run`" in err
    assert (old / "summary.json").read_bytes() == summary


def test_score_of_an_hf_run_is_byte_identical_and_loads_no_model(tiny_llama: Path, tmp_path: Path, monkeypatch,
                                                                  isolated_caches) -> None:
    import harness.adapters.hf as hf

    out = tmp_path / "runs"
    assert main(["run", "--model", f"hf:{tiny_llama}", "--suite", "gsm8k", "--limit", "2", "--max-tokens", "4",
                 "--out", str(out), "--run-id", "hf"]) == 0
    before = (out / "hf" / "summary.json").read_bytes()

    def no_load(*_: object, **__: object) -> None:
        raise AssertionError("harness score loaded a model")

    monkeypatch.setattr(hf.HFAdapter, "__init__", no_load)
    assert main(["score", str(out / "hf")]) == 0
    assert (out / "hf" / "summary.json").read_bytes() == before


def test_score_from_inside_the_run_directory(stub_run: Path, monkeypatch, capsys) -> None:
    before = (stub_run / "summary.json").read_bytes()
    monkeypatch.chdir(stub_run)
    assert main(["score", "."]) == 0
    assert (stub_run / "summary.json").read_bytes() == before
