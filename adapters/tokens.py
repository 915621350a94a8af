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
from dataclasses import dataclass
from typing import Any

from harness.core.errors import UsageError
from harness.core.records import LoglikelihoodRequest, LoglikelihoodResult, OnScore


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


# -- log-likelihood: where the continuation's tokens are --------------------------------------------

@dataclass(frozen=True)
class ScoringInput:
    """Tokens fed to the model for one log-likelihood request: ``ids[start:]`` are
    the continuation's tokens, each scored given everything before it."""

    ids: list[int]
    start: int
    n_bytes: int


def scoring_text(tokenizer: Any, request: LoglikelihoodRequest) -> tuple[str, int, int]:
    """The text the model reads and the character span of the continuation in it.

    A chat context is rendered as training renders a conversation
    (``train/sft.py``): the whole conversation with the continuation as the
    assistant's reply, whose span starts where the generation prompt of the
    context ends. If the template alters the reply (strips it, wraps it), the
    continuation is appended to the rendered context instead, as lm-eval does
    with ``--apply_chat_template``."""
    if isinstance(request.context, str):
        # lm-eval moves a raw context's trailing whitespace into the continuation
        # ("2+2 = " + "4" is scored as " 4"), since tokenizers attach spaces to the next word.
        text = request.context + request.continuation
        return text, len(request.context.rstrip()), len(text)
    messages = [{"role": m.role, "content": m.content} for m in request.context]
    before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": request.continuation}],
                                          tokenize=False)
    end = len(before) + len(request.continuation)
    if whole.startswith(before) and whole[len(before):end] == request.continuation:
        return whole, len(before), end
    return before + request.continuation, len(before), end


def encode_for_scoring(tokenizer: Any, request: LoglikelihoodRequest, max_len: int | None = None) -> ScoringInput:
    """Tokenise context + continuation together and split at the context boundary.

    The continuation's tokens are those holding any of its characters: the same
    split as lm-eval's (``whole[len(encode(context)):]``, a raw context's
    trailing whitespace moved to the continuation) whenever no token straddles
    the boundary, and one that still covers every continuation character when
    one does. ``n_bytes`` counts the UTF-8 bytes of the scored span (the
    continuation plus any whitespace moved to it). A
    raw context gets the tokenizer's special tokens (BOS), as a raw generation
    prompt does; a chat rendering already holds its own. A continuation that
    would be the first token is scored after BOS (or EOS when there is none).
    Raises ``ValueError`` (a per-request error) when nothing can be scored."""
    text, b0, b1 = scoring_text(tokenizer, request)
    enc = tokenizer(text, add_special_tokens=not request.is_chat, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > b0 and s < b1 and e > s]
    if not inside:
        raise ValueError("the continuation produced no tokens")
    start, stop = inside[0], inside[-1] + 1
    ids = ids[:stop]
    if start == 0:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("the context is empty and the tokenizer has neither a BOS nor an EOS token to start from")
        ids, start = [prefix, *ids], 1
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"context + continuation are {len(ids)} tokens; the model takes at most {max_len}")
    return ScoringInput(ids=ids, start=start, n_bytes=len(text[b0:b1].encode("utf-8")))


def require_template_for_chat(tokenizer: Any, requests: Sequence[LoglikelihoodRequest], target: str) -> None:
    if any(r.is_chat for r in requests) and not tokenizer.chat_template:
        raise UsageError(f"log-likelihood requests with chat contexts need a chat template and {target} has none; "
                         "pass --chat-template FILE.jinja")


def encode_all(tokenizer: Any, requests: Sequence[LoglikelihoodRequest], max_len: int | None,
               on_result: OnScore | None) -> tuple[list[LoglikelihoodResult | None], dict[int, ScoringInput]]:
    """Encode every request; one that cannot be scored becomes its error result at once."""
    out: list[LoglikelihoodResult | None] = [None] * len(requests)
    encoded: dict[int, ScoringInput] = {}
    for i, r in enumerate(requests):
        try:
            encoded[i] = encode_for_scoring(tokenizer, r, max_len)
        except ValueError as exc:
            out[i] = LoglikelihoodResult(id=r.id, error=str(exc))
            if on_result is not None:
                on_result(i, out[i])
    return out, encoded
