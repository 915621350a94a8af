"""Token-level helpers shared by the local adapters (HF, vLLM): decoding a
continuation together with its prompt, and encoding a log-likelihood request
so that the context/continuation boundary falls where lm-eval puts it.

Why decode together: SentencePiece / Metaspace tokenizers (Llama 1/2,
Mistral, CodeLlama) strip one leading space from whatever they decode, so the
generated ids of ``"    return x"`` decoded on their own give
``"   return x"`` and ``prompt + completion`` is an IndentationError. Decoding
``prompt ids + generated ids`` and cutting the prompt's own decode off the
front gives the text the model actually continued with, for every tokenizer
(vLLM's detokenizer does the same by priming its decode stream with prompt
tokens).

No torch or vllm import here: this module works on lists of ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decode_continuation(tokenizer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text of ``new_ids`` as it reads after the prompt.

    ``decode(prompt + new)`` minus ``decode(prompt)``; when the prompt's decode
    is not a prefix of the joint one (a clean-up rule merged across the
    boundary), the ids are decoded on their own as a fallback."""
    if not new_ids:
        return ""
    head = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full = tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    if full.startswith(head):
        return full[len(head):]
    return tokenizer.decode(list(new_ids), skip_special_tokens=True)
