"""Log-likelihood requests that share their whole context, scored with one pass over that context.

A multiple-choice question's options and the likelihood judge's ten ratings
(``Rating: [[1]]`` .. ``[[10]]`` after one judge prompt of ~1,000 tokens) are
several requests whose context tokens are identical. Scoring each as its own
sequence runs the context through the model once per continuation; here the
context runs once (batch 1, its KV cache kept), the logits of its last
position score every continuation's first token, and the continuations run
together on the shared cache (repeated per row, never copied in place), so
only their own tokens cost a forward pass. A continuation's last token is
never fed in: nothing is predicted from it. Right padding needs no mask under
causal attention: a row's real tokens never see the padding after them.

The sums equal the one-sequence computation up to fp32 summation order
(``tests/test_loglikelihood.py`` checks 1e-4 against a hand computation, HF
against vLLM within 1e-3 per token in the vllm tier). Models whose cache is not
a plain ``DynamicCache`` (sliding window, hybrid, encoder-decoder; see
``hf_batching.refill_supported``) are scored one sequence per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from harness.adapters.hf_batching import cache_kwarg
from harness.adapters.tokens import ScoringInput

# Context tokens below which a shared pass saves less than its extra forward call costs.
MIN_SHARED_TOKENS = 16


def shared_context_groups(encoded: Mapping[int, ScoringInput],
                          min_tokens: int = MIN_SHARED_TOKENS) -> tuple[list[list[int]], list[int]]:
    """(groups of request indices whose context tokens are identical, every other index), input order kept."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in encoded.items():
        groups.setdefault(tuple(x.ids[:x.start]), []).append(i)
    shared = [g for ctx, g in groups.items() if len(g) > 1 and len(ctx) >= min_tokens]
    grouped = {i for g in shared for i in g}
    return shared, [i for i in encoded if i not in grouped]


@torch.inference_mode()
def score_shared(model: Any, inputs: Sequence[ScoringInput], rows: int, device: Any,
                 pad_id: int) -> list[tuple[float, bool]]:
    """(sum of continuation log-probabilities, whether every token is the argmax) per input; all share
    ``inputs[0].ids[:start]`` as their context. ``rows`` continuations run per forward pass."""
    from transformers import DynamicCache

    cache_arg = cache_kwarg(model)
    context = inputs[0].ids[:inputs[0].start]
    if any(x.ids[:x.start] != context for x in inputs):
        raise ValueError("score_shared: the inputs do not share one context (group them with shared_context_groups)")
    out = model(input_ids=torch.tensor([context], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float()  # predicts each continuation's first token
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    n_ctx = len(context)
    results: list[tuple[float, bool]] = []
    for s in range(0, len(inputs), rows):
        conts = [x.ids[x.start:] for x in inputs[s:s + rows]]
        width = max(len(c) for c in conts) - 1  # the last token of each continuation is never an input
        logits = None
        if width > 0:
            tokens = torch.full((len(conts), width), pad_id, dtype=torch.long)
            for r, c in enumerate(conts):
                tokens[r, :len(c) - 1] = torch.tensor(c[:-1])
            cache = DynamicCache(ddp_cache_data=[(k.expand(len(conts), -1, -1, -1), v.expand(len(conts), -1, -1, -1))
                                                 for k, v in layers], config=model.config)
            positions = torch.arange(n_ctx, n_ctx + width, device=device)[None].expand(len(conts), -1)
            logits = model(input_ids=tokens.to(device), position_ids=positions, use_cache=True,
                           **{cache_arg: cache}).logits
        for r, c in enumerate(conts):
            scores = first[None] if len(c) == 1 else torch.cat([first[None], logits[r, :len(c) - 1].float()])
            target = torch.tensor(c, device=scores.device)
            logprobs = torch.log_softmax(scores, dim=-1).gather(-1, target[:, None]).squeeze(-1)
            results.append((float(logprobs.double().sum()), bool((scores.argmax(-1) == target).all())))
    return results
