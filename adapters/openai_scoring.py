"""Log-likelihood scoring through an OpenAI-compatible ``/completions`` endpoint.

The legacy completions API scores a prompt when asked to echo it:
``echo=true, logprobs=1, max_tokens=0`` returns, for every prompt token, its
text, its log-probability given what precedes it, the top alternative and its
character offset. ``vllm serve`` supports this (OpenAI's own API no longer
does). We send ``context + continuation`` as one prompt, so the server
tokenises them together, and split at the context boundary by character
offsets exactly as ``adapters/tokens.py`` does for local models (a raw
context's trailing whitespace moves to the continuation, as in lm-eval).

Chat contexts are refused: the server would have to render its chat template
around a partial assistant turn, which the completions API cannot express.
Score them with ``hf:`` or ``vllm:``, which render the template locally.

Before any request of a pass, one probe request checks that the endpoint can
score; one that cannot is a one-line ``UsageError`` (exit 2). A server that
refuses ``max_tokens=0`` is probed again with ``max_tokens=1`` (the generated
token lies past the continuation and is not counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.core.env import scrub
from harness.core.errors import UsageError
from harness.core.records import LoglikelihoodRequest, LoglikelihoodResult

PROBE = LoglikelihoodRequest(id="probe", context="The capital of France is", continuation=" Paris")


def check_chat_free(requests: Sequence[LoglikelihoodRequest], name: str) -> None:
    chat = [r.id for r in requests if r.is_chat]
    if chat:
        raise UsageError(f"{name} cannot score chat contexts ({len(chat)} requests, e.g. {chat[0]}): the completions "
                         "API scores raw text only; score them with a local model (--model hf:PATH or vllm:PATH)")


async def probe_scoring(adapter: Any) -> int:
    """``max_tokens`` the endpoint accepts for echo scoring (0, else 1); UsageError when it cannot score."""
    openai = adapter._openai
    reasons = []
    for max_tokens in (0, 1):
        try:
            resp = await _create(adapter, PROBE, max_tokens)
            score_reply(PROBE, resp)
            return max_tokens
        except openai.APIConnectionError:
            raise UsageError(f"model endpoint {adapter.endpoint.display_url} is unreachable; start the server "
                             "or fix --base-url") from None
        except (openai.APIStatusError, ValueError, AttributeError, TypeError) as exc:
            reasons.append(f"max_tokens={max_tokens}: {_short(exc, adapter.endpoint.api_key)}")
    raise UsageError(f"model endpoint {adapter.endpoint.display_url} cannot score log-likelihoods (POST /completions "
                     f"with echo=true, logprobs=1: {'; '.join(reasons)}); serve the model with vllm serve, or "
                     "score it locally with --model hf:PATH or vllm:PATH")


async def score_call(adapter: Any, request: LoglikelihoodRequest) -> LoglikelihoodResult:
    resp = await _create(adapter, request, adapter._score_max_tokens or 0)
    return score_reply(request, resp)


async def _create(adapter: Any, request: LoglikelihoodRequest, max_tokens: int) -> Any:
    assert isinstance(request.context, str)
    return await adapter._client.completions.create(model=adapter.model, prompt=request.context + request.continuation,
                                                    max_tokens=max_tokens, echo=True, logprobs=1, temperature=0.0)


def score_reply(request: LoglikelihoodRequest, resp: Any) -> LoglikelihoodResult:
    """Sum the echoed log-probabilities of the continuation's tokens. A reply without
    usable logprobs raises ValueError (a malformed reply: not retried)."""
    assert isinstance(request.context, str)
    prompt = request.context + request.continuation
    b0, b1 = len(request.context.rstrip()), len(prompt)
    lp = getattr(resp.choices[0], "logprobs", None) if getattr(resp, "choices", None) else None
    tokens, values = getattr(lp, "tokens", None), getattr(lp, "token_logprobs", None)
    offsets, tops = getattr(lp, "text_offset", None), getattr(lp, "top_logprobs", None)
    if not (tokens and values and offsets) or not len(tokens) == len(values) == len(offsets):
        raise ValueError("the reply carries no echoed prompt logprobs (tokens, token_logprobs, text_offset)")
    ends = [*offsets[1:], max(len(prompt), offsets[-1] + len(tokens[-1]))]
    inside = [i for i, (s, e) in enumerate(zip(offsets, ends, strict=True)) if e > b0 and s < b1 and e > s]
    if not inside:
        raise ValueError("no echoed token covers the continuation")
    scored = [values[i] for i in inside]
    if any(v is None for v in scored):
        raise ValueError("the continuation's first token has no log-probability (empty context); give a context")
    greedy = bool(tops) and all(_is_top(tokens[i], tops[i]) for i in inside)
    return LoglikelihoodResult(id=request.id, logprob_sum=float(sum(scored)), n_tokens=len(inside),
                               n_bytes=len(prompt[b0:b1].encode("utf-8")), is_greedy=greedy)


def _is_top(token: str, top: Any) -> bool:
    if not top:
        return False
    top = dict(top)
    return max(top, key=top.get) == token or top.get(token) == max(top.values())


def _short(exc: BaseException, key: str) -> str:
    status = getattr(exc, "status_code", None)
    text = scrub(str(exc).replace(key, "<redacted>") if len(key) >= 8 else str(exc)).replace("\n", " ")[:160]
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"
