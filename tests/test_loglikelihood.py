"""Log-likelihood requests (issue 13.1): records, the context/continuation split, and the HF adapter.

The split is checked on the boundaries that go wrong in practice: a continuation
with a leading space, a context that ends in a space (lm-eval moves it to the
continuation), a BOS-adding SentencePiece tokenizer, an empty context, and a chat
context rendered exactly as training renders it (the scored tokens are the
training labels of the reply). The HF adapter's sums are checked against a hand
computation from the logits of an unpadded forward pass of a tiny checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.core.records import LoglikelihoodRequest, LoglikelihoodResult, Message

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf(tiny_llama: Path):
    from harness.adapters.hf import HFAdapter
    from harness.core.models import ModelSpec
    return HFAdapter(ModelSpec("hf", str(tiny_llama), args={"batch_size": 2}), str(tiny_llama), needs_chat=False)


@pytest.fixture(scope="module")
def metaspace():
    from llama_tokenizer import metaspace_tokenizer
    return metaspace_tokenizer()


def raw(i: str, context: str, continuation: str) -> LoglikelihoodRequest:
    return LoglikelihoodRequest(id=i, context=context, continuation=continuation)


def scored_text(tokenizer, request: LoglikelihoodRequest) -> tuple[list[int], str]:
    from harness.adapters.tokens import encode_for_scoring
    x = encode_for_scoring(tokenizer, request)
    return x.ids[x.start:], tokenizer.decode(x.ids[x.start:])


# -- records --------------------------------------------------------------------------------------

def test_records_round_trip_and_keys():
    chat = LoglikelihoodRequest(id="c", context=(Message("user", "2+2?"),), continuation="4")
    text = raw("r", "2+2?", "4")
    assert LoglikelihoodRequest.from_dict(chat.to_dict()) == chat and LoglikelihoodRequest.from_dict(text.to_dict()) == text
    assert chat.is_chat and not text.is_chat
    assert chat.key() != text.key() and raw("other-id", "2+2?", "4").key() == text.key()
    res = LoglikelihoodResult(id="r", logprob_sum=-1.5, n_tokens=2, n_bytes=1, is_greedy=False)
    assert LoglikelihoodResult.from_dict(res.to_dict()) == res
    with pytest.raises(ValueError, match="empty"):
        raw("e", "x", "")


# -- the split ------------------------------------------------------------------------------------

def test_leading_space_belongs_to_the_continuation(hf):
    ids, text = scored_text(hf.tokenizer, raw("a", "Question: 2+2 =", " 4"))
    assert text == " 4" and ids == hf.tokenizer(" 4", add_special_tokens=False)["input_ids"]


def test_context_ending_in_a_space_is_tokenised_as_one_text(hf):
    # lm-eval moves trailing context spaces to the continuation: SmolLM2 splits " 4"
    # into "Ġ" "4", and both tokens are scored, as for context "... =" + " 4".
    ids, text = scored_text(hf.tokenizer, raw("a", "Question: 2+2 = ", "4"))
    whole = hf.tokenizer("Question: 2+2 = 4", add_special_tokens=False)["input_ids"]
    assert text == " 4" and ids == whole[-len(ids):]
    assert ids == scored_text(hf.tokenizer, raw("b", "Question: 2+2 =", " 4"))[0]


def test_metaspace_tokenizer_with_bos(metaspace):
    from harness.adapters.tokens import encode_for_scoring
    x = encode_for_scoring(metaspace, raw("a", "def f(x):\n", "    return x"))
    assert x.ids[0] == metaspace.bos_token_id and x.start > 1
    assert x.ids == metaspace("def f(x):\n    return x")["input_ids"]
    # the pieces scored carry every character of the continuation, its four spaces included
    # this toy BPE merges "):\n" across the boundary: the straddling token is scored, so no
    # continuation character is left out
    assert "".join(metaspace.convert_ids_to_tokens(x.ids[x.start:])).replace("▁", " ") == "):\n    return x"
    assert x.n_bytes == len("\n    return x")  # the context's trailing newline moved to the continuation


def test_empty_context_is_scored_after_bos(metaspace, hf):
    from harness.adapters.tokens import encode_for_scoring
    x = encode_for_scoring(metaspace, raw("a", "", "Hello"))
    assert x.ids[0] == metaspace.bos_token_id and x.start == 1
    y = encode_for_scoring(hf.tokenizer, raw("b", "", "Hello"))  # no BOS added: one is prepended
    assert y.start == 1 and y.ids[0] in (hf.tokenizer.bos_token_id, hf.tokenizer.eos_token_id)
    assert y.ids[1:] == hf.tokenizer("Hello", add_special_tokens=False)["input_ids"]


def test_chat_context_scores_exactly_the_training_labels_of_the_reply(hf):
    from harness.adapters.tokens import encode_for_scoring
    from harness.train.data import Conversation
    from harness.train.sft import IGNORE, encode

    context = (Message("system", "Be brief."), Message("user", "What is 2+2?"))
    reply = "It is 4."
    x = encode_for_scoring(hf.tokenizer, LoglikelihoodRequest(id="c", context=context, continuation=reply))
    conv = Conversation(id="c", source="t", messages=(*context, Message("assistant", reply)))
    trained = encode(hf.tokenizer, conv, max_length=512)
    labelled = [t for t in trained.labels if t != IGNORE]
    assert x.ids == trained.input_ids[:len(x.ids)]  # the same rendering and tokens as training
    im_end = hf.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert x.ids[x.start:] == [t for t in labelled if t != im_end]  # the reply, without the end-of-turn token
    assert hf.tokenizer.decode(x.ids[x.start:]) == reply


def test_too_long_is_a_per_request_error(hf):
    out = hf.loglikelihood([raw("long", "word " * 3000, " end"), raw("ok", "a", " b")])
    assert out[0].error and "at most" in out[0].error and out[0].logprob_sum is None
    assert out[1].error is None


# -- the HF adapter's numbers ------------------------------------------------------------------------

def hand_logprob(adapter, ids: list[int], start: int) -> tuple[float, bool]:
    import torch
    with torch.inference_mode():
        logits = adapter.model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(float(logprobs[p - 1, ids[p]]) for p in range(start, len(ids)))
    greedy = all(int(logits[p - 1].argmax()) == ids[p] for p in range(start, len(ids)))
    return total, greedy


def test_sums_equal_a_hand_computation_from_logits(hf):
    from harness.adapters.tokens import encode_for_scoring
    reqs = [raw("a", "Natalia sold clips", " to 48 of her friends"), raw("b", "", "Hello"),
            raw("c", "def add(a, b):\n", "    return a + b\n"), raw("d", "The answer is", " 42."),
            LoglikelihoodRequest(id="e", context=(Message("user", "Hello, how are you?"),), continuation="Fine.")]
    seen = []
    out = hf.loglikelihood(reqs, on_result=lambda i, r: seen.append(i))
    assert [r.id for r in out] == [r.id for r in reqs] and sorted(seen) == list(range(len(reqs)))
    for r, res in zip(reqs, out, strict=True):
        x = encode_for_scoring(hf.tokenizer, r)
        total, greedy = hand_logprob(hf, x.ids, x.start)
        assert res.error is None
        assert res.logprob_sum == pytest.approx(total, abs=1e-4)  # batched, left-padded == unpadded
        assert res.n_tokens == len(x.ids) - x.start and res.n_bytes == x.n_bytes >= len(r.continuation.encode())
        assert res.is_greedy == greedy and res.logprob_sum < 0


def test_requests_sharing_a_context_run_it_once_and_equal_the_hand_computation(hf, monkeypatch):
    """A question's options, a judge prompt's ten ratings: the context runs once, every continuation on
    its cache, in rows of batch_size (2 here); lengths 1 (no second pass) to 5, beside unshared requests."""
    from harness.adapters.tokens import encode_for_scoring
    question = "Question: Natalia sold clips to 48 of her friends in April, and then half as many in May. Answer:"
    conts = [" 72", " 72 clips", " seventy two", " 24", " she sold 72 clips in all", " 48"]
    reqs = [raw(f"opt{i}", question, c) for i, c in enumerate(conts)]
    reqs.insert(2, raw("alone", "The capital of France is", " Paris."))
    reqs.append(raw("short", "Hi", " there"))  # a context under MIN_SHARED_TOKENS is never grouped
    fed: list[int] = []
    forward = hf.model.forward
    monkeypatch.setattr(hf.model, "forward", lambda *a, **k: (fed.append(int(k["input_ids"].numel())),
                                                             forward(*a, **k))[1])
    seen: list[int] = []
    out = hf.loglikelihood(reqs, on_result=lambda i, r: seen.append(i))
    passed = list(fed)  # what the pass fed the model (the hand computations below add their own)
    assert [r.id for r in out] == [r.id for r in reqs] and sorted(seen) == list(range(len(reqs)))
    encoded = [encode_for_scoring(hf.tokenizer, r) for r in reqs]
    for r, x, res in zip(reqs, encoded, out, strict=True):
        total, greedy = hand_logprob(hf, x.ids, x.start)
        assert res.error is None, r.id
        assert res.logprob_sum == pytest.approx(total, abs=1e-4), r.id
        assert res.is_greedy == greedy and res.n_tokens == len(x.ids) - x.start and res.n_bytes == x.n_bytes
    ctx = encoded[0].start
    assert ctx >= 16 and all(encoded[i].ids[:encoded[i].start] == encoded[0].ids[:ctx] for i in (0, 1, 3, 4, 5, 6))
    # the shared context once, then the options' own tokens in rows of 2; the others as before (padded pairs)
    unshared = 2 * max(len(encoded[2].ids), len(encoded[7].ids))
    assert sum(passed) <= ctx + sum(2 * max(len(encoded[i].ids) - encoded[i].start - 1 for i in pair) for pair in
                                 ((0, 1), (3, 4), (5, 6))) + unshared
    assert sum(passed) < sum(len(x.ids) for x in encoded) - 3 * ctx


def test_greedy_continuation_is_flagged(hf):
    from harness.core.records import Request
    prompt = "The answer is"
    [gen] = hf.generate([Request(id="g", prompt=prompt, max_tokens=4)])
    [res] = hf.loglikelihood([raw("g", prompt, gen.texts[0])])
    assert res.is_greedy is True
    [other] = hf.loglikelihood([raw("o", prompt, " zebra zebra")])
    assert other.is_greedy is False and math.isfinite(other.logprob_sum)


def test_chat_context_without_a_template_is_a_usage_error(hf, monkeypatch):
    from harness.core.errors import UsageError
    monkeypatch.setattr(hf.tokenizer, "chat_template", None)
    with pytest.raises(UsageError, match="chat template"):
        hf.loglikelihood([LoglikelihoodRequest(id="c", context=(Message("user", "hi"),), continuation="yo")])


def test_hf_scoring_pass_is_journaled_and_resumes_after_a_kill(hf, tmp_path):
    from harness.core.journal import Journal
    from harness.run.passes import LOGLIKELIHOOD, run_pass

    reqs = [raw(f"p/{i}", f"Question {i}: what is {i} plus {i}?", f" {2 * i}") for i in range(5)]
    direct = hf.loglikelihood(reqs)
    identity = {"kind": "hf", "fingerprint": "tiny"}

    def dies_after_two(requests, on_result):
        landed = 0

        def callback(i, res):
            nonlocal landed
            on_result(i, res)
            landed += 1
            if landed == 2:
                raise KeyboardInterrupt  # killed mid-pass
        return hf.loglikelihood(requests, callback)

    sent: list[str] = []

    def recording(requests, on_result):
        sent.extend(r.id for r in requests)
        return hf.loglikelihood(requests, on_result)

    path = tmp_path / "probe.loglikelihood.jsonl"
    with pytest.raises(KeyboardInterrupt), Journal(path) as journal:
        run_pass(lambda: dies_after_two, reqs, journal, identity, LOGLIKELIHOOD, "probe", "hf")
    with Journal(path) as journal:
        resumed = run_pass(lambda: recording, reqs, journal, identity, LOGLIKELIHOOD, "probe", "hf")
    assert len(sent) == 3  # the two journaled results were not scored again
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in direct]
