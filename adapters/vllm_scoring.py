"""Log-likelihood scoring on the vLLM engine through ``prompt_logprobs``.

Each request's context + continuation goes to the engine as token ids
(encoded and split exactly as the HF adapter does, ``adapters/tokens.py``),
with ``prompt_logprobs=1``: vLLM returns, for every prompt position, the
log-probability of the prompt token there and its rank, so the continuation's
sum and whether each of its tokens was the argmax (rank 1) come from one
prefill. ``max_tokens=1`` because vLLM must generate something; that token is
not counted. Chunks of ``chunk_size`` requests, like generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.adapters.tokens import ScoringInput, encode_all, require_template_for_chat
from harness.core.errors import EngineError
from harness.core.records import LoglikelihoodRequest, LoglikelihoodResult, OnScore


def loglikelihood(adapter: Any, requests: Sequence[LoglikelihoodRequest],
                  on_result: OnScore | None = None) -> list[LoglikelihoodResult]:
    require_template_for_chat(adapter.tokenizer, requests, adapter.target)
    # One position is left for the token vLLM insists on generating.
    out, encoded = encode_all(adapter.tokenizer, requests, adapter.max_model_len - 1, on_result)
    live = sorted(encoded)
    for s in range(0, len(live), adapter.plan.chunk_size):
        chunk = live[s:s + adapter.plan.chunk_size]
        prompts = [{"prompt_token_ids": encoded[i].ids} for i in chunk]
        params = [adapter.engine.sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
                  for _ in chunk]
        outputs = adapter.engine.generate(prompts, params, adapter._lora)
        if len(outputs) != len(chunk):
            raise EngineError(f"vLLM returned {len(outputs)} outputs for {len(chunk)} prompts")
        for i, output in zip(chunk, outputs, strict=True):
            out[i] = result_from_prompt_logprobs(requests[i].id, encoded[i], output.prompt_logprobs)
            if on_result is not None:
                on_result(i, out[i])
    return [r for r in out if r is not None]


def result_from_prompt_logprobs(request_id: str, x: ScoringInput, prompt_logprobs: Any) -> LoglikelihoodResult:
    """Sum of the continuation positions' logprobs; ``prompt_logprobs[p]`` maps token id -> Logprob."""
    if prompt_logprobs is None or len(prompt_logprobs) != len(x.ids):
        got = "none" if prompt_logprobs is None else len(prompt_logprobs)
        return LoglikelihoodResult(id=request_id, error=f"vLLM returned {got} prompt logprobs for {len(x.ids)} tokens")
    total, greedy = 0.0, True
    for p in range(x.start, len(x.ids)):
        entry = prompt_logprobs[p][x.ids[p]]
        total += float(entry.logprob)
        greedy = greedy and entry.rank == 1
    return LoglikelihoodResult(id=request_id, logprob_sum=total, n_tokens=len(x.ids) - x.start, n_bytes=x.n_bytes,
                               is_greedy=greedy)
