"""HF generation batching: the refilling decode loop gives model.generate's text at any batch size,
the automatic batch size is computed once per pass from memory and recorded, an explicit one wins."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.records import Message, Request

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path):
    from harness.adapters.hf import HFAdapter
    return HFAdapter(ModelSpec("hf", str(tiny_llama), args={"batch_size": 8}), str(tiny_llama))


def _requests(**kw) -> list[Request]:
    return [Request(id=str(i), messages=(Message("user", f"question {i} " * (1 + i % 4)),), **kw) for i in range(6)]


def _generate(adapter, requests, *, refill: bool, batch: int | None):
    saved = adapter.refill, adapter.generation_batch
    adapter.refill, adapter.generation_batch = refill, batch
    try:
        return adapter.generate(requests)
    finally:
        adapter.refill, adapter.generation_batch = saved


def _stops_that_end_rows_apart(adapter) -> tuple[str, ...]:
    """Two-character stop strings taken at different offsets of the free greedy texts (no newline, so none
    can join the prompt's trailing newline), so rows finish at different steps."""
    free = _generate(adapter, _requests(max_tokens=8), refill=False, batch=8)
    stops = {c.texts[0][k + 1:k + 3] for k, c in enumerate(free) if len(c.texts[0]) > k + 3}
    return tuple(sorted(s for s in stops if "\n" not in s and s.strip()))


def test_refill_matches_static_generate_at_every_batch_size(adapter) -> None:
    assert adapter.refill  # a llama's cache is plain DynamicLayers: the loop is what runs by default
    stops = _stops_that_end_rows_apart(adapter)
    reqs = _requests(max_tokens=8, stop=stops)
    static = _generate(adapter, reqs, refill=False, batch=8)
    assert len({c.completion_tokens for c in static}) > 1  # rows really end at different steps
    for batch in (1, 2, 5, None):
        got = _generate(adapter, reqs, refill=True, batch=batch)
        assert [c.texts for c in got] == [c.texts for c in static], batch
        assert [c.finish_reasons for c in got] == [c.finish_reasons for c in static], batch
        assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in static]


def test_refill_keeps_seeded_samples(adapter) -> None:
    reqs = [Request(id="s", messages=(Message("user", "tell a story"),), max_tokens=6, temperature=1.0, n=3, seed=7),
            Request(id="t", messages=(Message("user", "another"),), max_tokens=6, temperature=1.0, seed=8)]
    static = _generate(adapter, reqs, refill=False, batch=8)
    got = _generate(adapter, reqs, refill=True, batch=2)
    assert [c.texts for c in got] == [c.texts for c in static]
    assert len(set(got[0].texts)) > 1


def test_finished_rows_are_replaced_by_waiting_ones(adapter) -> None:
    from harness.adapters.hf_batching import DecodeSettings, RefillDecoder, Row

    lengths = [1, 6, 2, 6, 3, 6]  # per-row max_tokens through the row count; static pairs would take 6+6+6 steps
    steps = []

    class Counting(RefillDecoder):
        def _step(self, *args):
            steps.append(1)
            return super()._step(*args)

        def _advance(self, rows, chosen, on_row_done):
            super()._advance(rows, chosen, on_row_done)
            for row in rows:  # each row ends at its own length, as an EOS would end it
                if not row.done and len(row.tokens) >= lengths[row.request]:
                    row.done = True
                    on_row_done(row)

    prompt = adapter.tokenizer("hello there")["input_ids"]
    rows = [Row(i, 0, prompt) for i in range(len(lengths))]
    finished: list[int] = []
    Counting(adapter.model, adapter.tokenizer, 2, DecodeSettings(6, frozenset(), adapter.tokenizer.pad_token_id)
             ).run(rows, lambda r: finished.append(r.request))
    assert sorted(finished) == list(range(6)) and [len(r.tokens) for r in rows] == lengths
    assert len(steps) < 5 + 5 + 5  # the first token comes from the prefill; refill needs fewer steps


def test_auto_batch_size_is_chosen_once_per_pass_and_recorded(tiny_llama: Path) -> None:
    from harness.adapters.hf import HFAdapter

    auto = HFAdapter(ModelSpec("hf", str(tiny_llama)), str(tiny_llama))
    assert auto.generation_batch is None and auto.batch_size == 8  # scoring batches keep the CPU default
    auto.generate(_requests(max_tokens=3))
    passes = auto.describe()["generation_batches"]["passes"]
    assert len(passes) == 1 and passes[0]["rows"] == 6 and passes[0]["batch_size"] == 6  # all fit: capped by rows
    assert auto.describe()["generation_batches"]["batch_size"] == "auto"
    explicit = HFAdapter(ModelSpec("hf", str(tiny_llama), args={"batch_size": "3"}), str(tiny_llama))
    explicit.generate(_requests(max_tokens=2))
    assert explicit.generation_batch == 3 and explicit.describe()["generation_batches"]["passes"] == []


def test_batch_size_comes_from_kv_cache_per_token_and_the_budget() -> None:
    from harness.adapters.hf_batching import bytes_per_row, choose_batch_size, kv_bytes_per_token

    cfg = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, num_hidden_layers=30,
                          intermediate_size=1536, vocab_size=49152)  # SmolLM2-135M
    assert kv_bytes_per_token(cfg, torch.float32) == 2 * 30 * 3 * 64 * 4  # 46,080 bytes
    assert kv_bytes_per_token(cfg, torch.bfloat16) == 2 * 30 * 3 * 64 * 2
    per_row = bytes_per_row(cfg, torch.float32, 1280)
    cpu = torch.device("cpu")
    assert choose_batch_size(cfg, torch.float32, cpu, rows=1000, longest=1280, budget=10 * per_row).batch_size == 10
    assert choose_batch_size(cfg, torch.float32, cpu, rows=4, longest=1280, budget=10 * per_row).batch_size == 4
    assert choose_batch_size(cfg, torch.float32, cpu, rows=10**6, longest=8, budget=2**40).batch_size == 32
    assert choose_batch_size(cfg, torch.float32, cpu, rows=9, longest=1280, budget=1).batch_size == 1


def test_generation_config_processing_keeps_model_generate(adapter) -> None:
    from harness.adapters.hf_batching import refill_supported

    gen = adapter.model.generation_config
    assert refill_supported(adapter.model)
    gen.repetition_penalty = 1.3
    try:
        assert not refill_supported(adapter.model)  # the loop does not apply penalties: generate must
    finally:
        gen.repetition_penalty = 1.0


def test_a_sliding_window_cache_keeps_model_generate() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from harness.adapters.hf_batching import refill_supported

    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=1, num_key_value_heads=1, sliding_window=8))
    assert not refill_supported(model)  # its cache layers drop old tokens: the loop's joins would misalign them


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_batch_size_is_refused_at_preflight(tiny_llama: Path, value: str) -> None:
    from harness.adapters import preflight
    with pytest.raises(UsageError, match=f"--model-args batch_size='{value}' is not a positive integer or auto"):
        preflight(ModelSpec("hf", str(tiny_llama), {"batch_size": value}))  # before any model is loaded
    with pytest.raises(UsageError, match="--judge-args batch_size"):
        preflight(ModelSpec("hf", str(tiny_llama), {"batch_size": value}), role="judge")


def test_out_of_memory_fails_the_rows_in_flight_and_the_rest_go_on(adapter) -> None:
    from harness.adapters.hf_batching import DecodeSettings, RefillDecoder, Row

    class OneOOM(RefillDecoder):
        failed = False

        def _step(self, *args):
            if not self.failed:
                OneOOM.failed = True
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super()._step(*args)

    prompt = adapter.tokenizer("hello there")["input_ids"]
    rows = [Row(i, 0, prompt) for i in range(4)]
    done: list[int] = []
    OneOOM(adapter.model, adapter.tokenizer, 2, DecodeSettings(3, frozenset(), adapter.tokenizer.pad_token_id)
           ).run(rows, lambda r: done.append(r.request))
    assert sorted(done) == [0, 1, 2, 3]  # every row reported once
    assert [r.error is not None for r in rows] == [True, True, False, False]
    assert rows[0].error.startswith("out of memory") and [len(r.tokens) for r in rows[2:]] == [3, 3]


def test_growing_cache_holds_what_concatenation_holds_without_a_copy_per_step(adapter) -> None:
    """The refill loop's cache layers write each step into spare room (DynamicLayer concatenates: a copy
    of the whole cache per layer per step, 28% of a batch-8 step on SmolLM2 here)."""
    from transformers.cache_utils import DynamicLayer

    from harness.adapters.hf_batching import growing_cache

    layer, plain = growing_cache(adapter.model.config).layers[0], DynamicLayer()
    gen = torch.Generator().manual_seed(0)

    def both(n: int) -> None:
        k, v = torch.randn(3, 2, n, 4, generator=gen), torch.randn(3, 2, n, 4, generator=gen)
        got, want = layer.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    both(7)  # a prefill
    buffers = set()
    for _ in range(150):  # decode steps, past the first buffer's room
        both(1)
        buffers.add(layer._kbuf.data_ptr())
    assert layer.get_seq_length() == plain.get_seq_length() == 157
    assert len(buffers) <= 4  # grown a few times (by a quarter, at least 64 tokens), not once per step
    for target in (layer, plain):  # rows leave the batch as the loop's _select drops them
        target.keys, target.values = target.keys[[0, 2], :, 5:], target.values[[0, 2], :, 5:]
    k, v = torch.randn(2, 2, 1, 4, generator=gen), torch.randn(2, 2, 1, 4, generator=gen)
    got, want = layer.update(k, v), plain.update(k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and layer.get_seq_length() == 153


def test_refill_matches_static_generate_past_the_cache_buffers_room(adapter) -> None:
    reqs = _requests(max_tokens=90)  # prompts of ~20 tokens + 90: every row's cache grows at least once
    static = _generate(adapter, reqs, refill=False, batch=8)
    for batch in (2, None):
        got = _generate(adapter, reqs, refill=True, batch=batch)
        assert [c.texts for c in got] == [c.texts for c in static], batch


def test_the_decode_loops_linear_layers_run_on_onednn_on_cpu_and_are_restored(adapter, monkeypatch) -> None:
    import harness.adapters.hf_batching as hb

    model = adapter.model
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    head = model.get_output_embeddings()
    # Prefill-shaped inputs: more rows than the reorder's batch hint.
    xs = [torch.randn(3, 7, m.in_features) for m in linears]
    want = [torch.nn.functional.linear(x, m.weight, m.bias) for x, m in zip(xs, linears, strict=True)]
    with torch.inference_mode(), hb.onednn_linears(model, 8) as how:
        assert how == ("packed" if torch.backends.mkldnn.is_available() else "off")
        assert all("forward" in vars(m) for m in linears) == (how == "packed")
        got = [m(x) for x, m in zip(xs, linears, strict=True)]
        row = linears[0](xs[0][:1, -1:])  # one row alone: the same numbers as inside the batch
    assert all(torch.allclose(g, w, atol=1e-5, rtol=1e-5) for g, w in zip(got, want, strict=True))
    assert torch.equal(row, got[0][:1, -1:])
    assert not any("forward" in vars(m) for m in linears)  # the modules' own forward again after the loop

    # A weight copy that would not fit twice in the memory left: only the head, on its own weight.
    monkeypatch.setattr(hb, "available_memory", lambda device: 1)
    with torch.inference_mode(), hb.onednn_linears(model, 8) as how:
        if how != "off":
            assert how == "head" and [m for m in linears if "forward" in vars(m)] == [head]

    class Wrapped(torch.nn.Module):  # e.g. a quantized layer: left alone
        def forward(self, x):
            return x
    with hb.onednn_linears(torch.nn.Sequential(Wrapped()), 8) as how:
        assert how == "off"


def test_grouped_decode_attention_equals_sdpa_for_query_heads_sharing_kv_heads(adapter) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from harness.adapters.hf_batching import grouped_decode_attention

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=gen) for s in ((4, 6, 1, 16), (4, 2, 11, 16), (4, 2, 11, 16)))
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., :5] = mask[3, ..., :2] = False  # left padding
    want, _ = sdpa(module, q, k, v, mask, scaling=0.25, position_ids=None, use_cache=True)
    q2 = torch.randn(4, 6, 2, 16, generator=gen)  # two query positions (a prefill): transformers' function
    mask2 = torch.ones(4, 1, 2, 11, dtype=torch.bool)
    want2, _ = sdpa(module, q2, k, v, mask2, scaling=0.25)
    with grouped_decode_attention(adapter.model) as on:
        assert on and ALL_ATTENTION_FUNCTIONS["sdpa"] is not sdpa
        got, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, mask, scaling=0.25, position_ids=None,
                                                  use_cache=True)
        got2, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q2, k, v, mask2, scaling=0.25)
        additive = torch.zeros(4, 1, 1, 11).masked_fill(~mask, torch.finfo(torch.float32).min)
        got3, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, additive, scaling=0.25)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa  # restored
    assert got.shape == want.shape == (4, 1, 6, 16)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5) and torch.allclose(got3, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(got2, want2)
    eager = SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager"), device=torch.device("cpu"))
    with grouped_decode_attention(eager) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa


def test_refill_with_the_cpu_kernels_matches_static_generate_on_a_grouped_query_model(tmp_path: Path) -> None:
    from conftest import build_tiny_llama

    from harness.adapters.hf import HFAdapter

    path = str(build_tiny_llama(tmp_path / "gqa", seed=1, num_attention_heads=4, num_key_value_heads=2))
    gqa = HFAdapter(ModelSpec("hf", path, args={"batch_size": 8}), path)
    reqs = _requests(max_tokens=40)
    static = _generate(gqa, reqs, refill=False, batch=8)
    got = _generate(gqa, reqs, refill=True, batch=3)
    assert [c.texts for c in got] == [c.texts for c in static]
    kernels = gqa.describe()["generation_batches"]["decode_kernels"]
    assert kernels["decode_attention"] == "grouped"
    assert kernels["linears"] == ("packed" if torch.backends.mkldnn.is_available() else "off")
