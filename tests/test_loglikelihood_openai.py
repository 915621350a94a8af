"""Log-likelihood scoring through an OpenAI-compatible endpoint, against the stub over real HTTP.

The stub scores echoed prompts one character per token with a fixed
log-probability per character (``openai_stub.char_logprob``), so every expected
sum is computed here by hand.
"""

from __future__ import annotations

import pytest
from openai_stub import Reply, StubServer, char_logprob, char_top, echo

from harness.adapters.openai import OpenAIAdapter
from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.records import LoglikelihoodRequest, Message

FAST = {"backoff": 0.01, "max_backoff": 0.05}


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def adapter(stub: StubServer) -> OpenAIAdapter:
    return OpenAIAdapter(ModelSpec("openai", "stub", dict(FAST), stub.url), concurrency=4)


def expected(context: str, continuation: str) -> tuple[float, int, bool]:
    span = (context + continuation)[len(context.rstrip()):]  # trailing context spaces move over, as in lm-eval
    return sum(char_logprob(c) for c in span), len(span), all(char_top(c) == c for c in span)


def test_sums_match_the_echoed_logprobs():
    reqs = [LoglikelihoodRequest(id="a", context="Question: 2+2 =", continuation=" 4"),
            LoglikelihoodRequest(id="b", context="Question: 2+2 = ", continuation="4"),
            LoglikelihoodRequest(id="c", context="def f(x):\n", continuation="    return x"),
            LoglikelihoodRequest(id="d", context="Hi", continuation="ab")]
    seen = []
    with StubServer() as stub:
        a = adapter(stub)
        out = a.loglikelihood(reqs, on_result=lambda i, r: seen.append(i))
        a.close()
    assert [r.id for r in out] == ["a", "b", "c", "d"] and sorted(seen) == [0, 1, 2, 3]
    for r, res in zip(reqs, out, strict=True):
        total, n, greedy = expected(r.context, r.continuation)
        assert res.error is None, res.error
        assert res.logprob_sum == pytest.approx(total) and res.n_tokens == n and res.n_bytes == n
        assert res.is_greedy == greedy
    bodies = [c.body for c in stub.calls if c.path == "/v1/completions"]
    assert all(b["echo"] is True and b["logprobs"] == 1 and b["max_tokens"] == 0 for b in bodies)
    assert {b["prompt"] for b in bodies} >= {"Question: 2+2 = 4", "def f(x):\n    return x"}


def test_endpoint_that_cannot_score_fails_before_any_work():
    with StubServer(scoring=False) as stub:
        a = adapter(stub)
        with pytest.raises(UsageError, match=r"cannot score log-likelihoods .*echo is not supported.*vllm serve"):
            a.loglikelihood([LoglikelihoodRequest(id=f"q{i}", context="x", continuation=" y") for i in range(20)])
        a.close()
    assert stub.count("/v1/completions") == 2  # the probe (max_tokens 0, then 1); none of the 20 requests


def test_server_refusing_max_tokens_0_is_scored_with_1():
    def no_zero(call):
        if call.body.get("max_tokens") == 0:
            return Reply(status=400, text="max_tokens must be at least 1")
        return echo(call)

    with StubServer(no_zero) as stub:
        a = adapter(stub)
        [res] = a.loglikelihood([LoglikelihoodRequest(id="a", context="Hello", continuation=" world")])
        a.close()
    total, n, _ = expected("Hello", " world")
    assert res.error is None and res.logprob_sum == pytest.approx(total) and res.n_tokens == n  # generated token not counted


def test_chat_contexts_are_refused_with_the_fix():
    with StubServer() as stub:
        a = adapter(stub)
        with pytest.raises(UsageError, match="chat contexts.*hf:PATH or vllm:PATH"):
            a.loglikelihood([LoglikelihoodRequest(id="c", context=(Message("user", "hi"),), continuation="yo")])
        a.close()
        assert stub.count() == 0


def test_empty_context_is_a_per_request_error():
    with StubServer() as stub:
        a = adapter(stub)
        [res, ok] = a.loglikelihood([LoglikelihoodRequest(id="e", context="", continuation="Hello"),
                                     LoglikelihoodRequest(id="k", context="A", continuation="B")])
        a.close()
    assert res.error and "empty context" in res.error and res.logprob_sum is None
    assert ok.error is None
