"""Run directories never delete what is not ours; one writer per directory; exit codes that mean something.

Hostile and careless ``--run-id``/``--fresh`` combinations must leave every
file they do not own in place; a dead judge with ``--fresh`` must lose nothing
(every preflight runs before a file is touched); two endpoints serving the
same model name never share a run directory; a second run into a directory in
use fails with one line. Models are served by the scripted stub on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from openai_stub import Call, Reply, StubServer, echo_text

from harness.cli import main
from harness.core.errors import UsageError
from harness.run.rundir import MARKER, check_run_id, open_run_dir

pytest.importorskip("openai")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("SFT_HARNESS_CACHE", str(tmp_path / "cache"))


def dead_port() -> int:
    """A real local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gsm8k_run(url: str, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "openai:stub", "--base-url", url, "--suite", "gsm8k", "--limit", "2",
            "--out", str(out), *extra]


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error:") and "Traceback" not in err
    return err.splitlines()[-1]


# -- run ids are plain names ----------------------------------------------------------------------------

@pytest.mark.parametrize("run_id", [".", "..", "../..", "/abs/dir", "a/b", "", "x\\y"])
def test_run_id_must_be_a_plain_name(run_id: str) -> None:
    with pytest.raises(UsageError, match="plain directory name"):
        check_run_id(run_id)


@pytest.mark.parametrize("run_id", [".", "../..", "ABS"])
def test_fresh_with_a_path_like_run_id_deletes_nothing(run_id: str, tmp_path: Path, capsys) -> None:
    out = user_folder(tmp_path / "work" / "out")
    outside = user_folder(tmp_path / "elsewhere")
    run_id = str(outside) if run_id == "ABS" else run_id
    with StubServer() as stub:
        code = main(gsm8k_run(stub.url, out, "--run-id", run_id, "--fresh"))
        assert stub.count() == 0  # refused before any request
    assert code == 2
    assert "--run-id" in one_line_error(capsys)
    assert (out / "thesis.tex").exists() and (outside / "thesis.tex").exists()
    assert (tmp_path / "work").exists()


def test_fresh_never_clears_a_directory_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    mine = user_folder(out / "mine")
    with StubServer() as stub:
        assert main(gsm8k_run(stub.url, out, "--run-id", "mine", "--fresh")) == 2
    assert "not a harness run directory" in one_line_error(capsys)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not (mine / MARKER).exists()


def test_fresh_clears_our_own_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer(lambda c: Reply(text=echo_text(c.content))) as stub:
        assert main(gsm8k_run(stub.url, out, "--run-id", "r")) == 0
        first = stub.count()
        assert main(gsm8k_run(stub.url, out, "--run-id", "r", "--fresh")) == 0
        assert stub.count() == 2 * first  # journals discarded: everything regenerated


def test_a_dead_judge_with_fresh_loses_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer() as stub:
        assert main(gsm8k_run(stub.url, out, "--run-id", "keep")) == 0
        before = {p.name: p.read_bytes() for p in (out / "keep").iterdir() if p.is_file()}
        capsys.readouterr()
        code = main(["run", "--model", "openai:stub", "--base-url", stub.url, "--suite", "gsm8k,mt_bench",
                     "--limit", "2", "--out", str(out), "--run-id", "keep", "--fresh",
                     "--judge", "openai:judge", "--judge-base-url", f"http://127.0.0.1:{dead_port()}/v1"])
    assert code == 2
    assert "judge" in one_line_error(capsys)
    after = {p.name: p.read_bytes() for p in (out / "keep").iterdir() if p.is_file()}
    assert after == before


# -- endpoints and locks ---------------------------------------------------------------------------------

def test_two_endpoints_serving_one_model_name_never_share_a_run_directory(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer(lambda c: "A") as a, StubServer(lambda c: "B") as b:
        assert main(gsm8k_run(a.url, out)) == 0
        assert main(gsm8k_run(b.url, out)) == 0
        assert len([p for p in out.iterdir() if p.is_dir()]) == 2
        assert main(gsm8k_run(a.url, out, "--run-id", "shared")) == 0
        capsys.readouterr()
        assert main(gsm8k_run(b.url, out, "--run-id", "shared")) == 2  # refused, not overwritten
        assert b.count() == 2
    assert "two endpoints never share a run directory" in one_line_error(capsys)


def test_a_second_run_into_a_directory_in_use_fails_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer() as stub, open_run_dir(out, "busy"):
        assert main(gsm8k_run(stub.url, out, "--run-id", "busy")) == 2
        assert stub.count() == 0
    line = one_line_error(capsys)
    assert "is in use by harness pid" in line and str(os.getpid()) in line
    with open_run_dir(out, "busy"):  # released: usable again
        pass


# -- exit codes ------------------------------------------------------------------------------------------

def test_every_request_failing_exits_1_and_says_so_last(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer(lambda c: Reply(status=400)) as stub:
        assert main(gsm8k_run(stub.url, out, "--run-id", "r")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no item of gsm8k was scored" in last and "kept" in last
    assert (out / "r" / "summary.json").exists()


def test_a_judge_that_dies_after_generation_exits_1(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with StubServer() as judge:
        def model(call: Call) -> str:
            if "#t2" in str(call.body) or len(model_stub.calls) >= 2:  # the last generation: the judge dies
                threading.Thread(target=judge.kill).start()
            return echo_text(call.content)

        with StubServer(model) as model_stub:
            code = main(["run", "--model", "openai:stub", "--base-url", model_stub.url, "--suite", "mt_bench",
                         "--limit", "1", "--out", str(out), "--run-id", "r", "--judge", "openai:stub",
                         "--judge-base-url", judge.url, "--judge-args", "max_retries=0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "finished work is kept" in err
    assert len((out / "r" / "mt_bench.generations.jsonl").read_text().splitlines()) == 2


def test_two_concurrent_runs_into_one_directory_one_wins_the_other_fails_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "SFT_HARNESS_CACHE": str(tmp_path / "cache")}
    env.pop("OPENAI_API_KEY", None)
    with StubServer(latency=1.5) as stub:  # the winner holds the lock for 3 s: the loser meets it
        cmd = [sys.executable, "-m", "harness", *gsm8k_run(stub.url, out, "--run-id", "same", "--concurrency", "1")]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = [ln for ln in loser.strip().splitlines() if " INFO " not in ln]
    assert len(lines) == 1 and "is in use by harness pid" in lines[0] and "Traceback" not in loser
    assert len((out / "same" / "gsm8k.generations.jsonl").read_text().splitlines()) == 2  # one writer


def test_fresh_through_a_symlinked_run_id_deletes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = user_folder(tmp_path / "home")
    (target / "config.json").write_text('{"format": 1, "run_id": "looks-like-a-run"}')  # even one that looks ours
    (out / "link").symlink_to(target, target_is_directory=True)
    with StubServer() as stub:
        assert main(gsm8k_run(stub.url, out, "--run-id", "link", "--fresh")) == 2
    assert "is a symbolic link" in one_line_error(capsys)
    assert (target / "thesis.tex").exists() and (target / "config.json").exists()
