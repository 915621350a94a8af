"""Slow: the real embedded SmolLM2-135M-Instruct on a few GSM8K problems, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(out: Path, *extra: str) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness", "run", "--model", "smollm2-135m-instruct", "--suite", "gsm8k",
           "--limit", "3", "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "strict" in res.stdout and "flexible" in res.stdout  # the report is printed
    (rd,) = [p for p in out.iterdir() if p.is_dir()]
    return rd


def test_embedded_model_scores_gsm8k_and_is_reproducible(tmp_path: Path) -> None:
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")  # separate run directory: generated again from scratch
    rows_a = (first / "gsm8k.samples.jsonl").read_text()
    rows_b = (second / "gsm8k.samples.jsonl").read_text()
    assert rows_a == rows_b  # same seed, identical samples
    rows = [json.loads(line) for line in rows_a.splitlines()]
    assert len(rows) == 3 and all(r["completions"][0]["texts"][0].strip() for r in rows)
    config = json.loads((first / "config.json").read_text())
    assert "<|im_start|>" in Path(config["adapter"]["target"], "chat_template.jinja").read_text()
    assert (first / "report.md").exists()


def test_embedded_conversion_matches_gguf_argmax() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.adapters.embedded import ensure_embedded, gguf_path

    src = gguf_path("smollm2-135m-instruct")
    converted = ensure_embedded("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(converted)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)(ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
