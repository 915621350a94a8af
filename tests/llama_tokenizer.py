"""An offline Llama-style (SentencePiece / Metaspace) tokenizer and a tiny checkpoint using it.

Llama 1/2, Mistral and CodeLlama tokenizers mark a word boundary with ``▁``, prepend one
``▁`` to the text, and their decoder strips one leading space from whatever it decodes.
So the ids of ``"    return x"`` decoded on their own give ``"   return x"``: the bug
that breaks HumanEval completion mode on LLaMA when a completion is decoded apart from
its prompt. Built with the ``tokenizers`` library from a few lines of text, no hub.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = ["def add(a, b):\n    return a + b\n", "Natalia sold 48 clips in April and half as many in May.",
          "The answer is 42.", "Hello, how are you today?", "    if x:\n        return x\n"] * 20
SPECIALS = ["<unk>", "<s>", "</s>"]


def metaspace_tokenizer():
    """A 300-piece BPE with Llama-2's normaliser and decoder (Prepend ▁, spaces as ▁, Strip 1)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    from tokenizers.processors import TemplateProcessing
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def build_metaspace_llama(out: Path, seed: int = 0) -> Path:
    """A tiny random Llama (head_dim 64, as vLLM's CPU attention needs) with that tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = metaspace_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, num_attention_heads=2, num_key_value_heads=2,
                         num_hidden_layers=2, intermediate_size=256, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = config.eos_token_id, config.pad_token_id, config.bos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def piece_ids(tokenizer, pieces: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert tokenizer.unk_token_id not in ids, pieces
    return ids
