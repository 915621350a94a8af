"""A tiny random Llama for tests, examples and benchmarks: no hub, seconds on a CPU.

A byte-level BPE trained on the given texts and a randomly initialised
``LlamaForCausalLM`` (hidden 64, 2 layers by default), saved with
``save_pretrained`` and the ChatML template, so every adapter and the
trainer load it like any checkpoint. ``python -m harness.train.tiny DIR``
builds one from the example sources beside the study examples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness.train.data import Conversation
from harness.train.templates import CHATML


def build_tiny_llama(out: Path, texts: Sequence[str], vocab_size: int = 2048, hidden: int = 64,
                     layers: int = 2, seed: int = 0) -> Path:
    """A random LlamaForCausalLM with a byte-level BPE trained on ``texts`` and the ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    tok.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def conversation_texts(convs: Sequence[Conversation]) -> list[str]:
    return [m.content for c in convs for m in c.messages]


if __name__ == "__main__":  # pragma: no cover - convenience: build the tiny model
    import sys

    from harness.train.data import SourceSpec, load_source

    here = Path(__file__).parent / "examples"
    convs = [c for name, p, f in (("math", "tiny_gsm8k.jsonl", "gsm8k"), ("code", "tiny_code_alpaca.json", "alpaca"),
                                  ("general", "tiny_sharegpt.json", "sharegpt"))
             for c in load_source(SourceSpec(name, str(here / p), f))[0]]
    print(build_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()), conversation_texts(convs)))
