"""The OpenAI-compatible client's per-call cost (issue 16.5): one pooled client for every pass (connections
kept alive, not one per request), and replies read as JSON without the SDK's parameter transform."""

from __future__ import annotations

import pytest
from openai_stub import StubServer, echo

from harness.adapters.openai import OpenAIAdapter
from harness.core.models import ModelSpec
from harness.core.records import Message, Request

FAST = {"backoff": 0.01, "max_backoff": 0.05}


def chat(i: int) -> Request:
    return Request(id=f"q{i}", messages=(Message("user", f"question {i}"),), max_tokens=8)


def test_passes_reuse_a_few_kept_alive_connections() -> None:
    with StubServer(echo) as stub:
        accepted = []
        accept = stub._server.get_request

        def counting_accept():
            conn = accept()
            accepted.append(conn[1])
            return conn
        stub._server.get_request = counting_accept
        a = OpenAIAdapter(ModelSpec("openai", "stub", FAST, stub.url), concurrency=4)
        before = len(accepted)  # the health check's own short-lived client
        for _ in range(3):  # three passes through the same adapter
            out = a.generate([chat(i) for i in range(20)])
            assert all(c.error is None for c in out)
        a.close()
    assert stub.count("/v1/chat/completions") == 60
    assert len(accepted) - before <= 4  # at most one connection per request in flight, reused across passes


def test_requests_skip_the_sdk_parameter_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai._utils._transform as transform

    def refuse(*args, **kwargs):
        raise AssertionError("the SDK's per-call parameter transform ran")
    monkeypatch.setattr(transform, "async_maybe_transform", refuse)
    monkeypatch.setattr(transform, "async_transform", refuse)
    with StubServer(echo) as stub:
        a = OpenAIAdapter(ModelSpec("openai", "stub", FAST, stub.url), concurrency=2)
        out = a.generate([chat(1), Request(id="p", prompt="def f():", max_tokens=4)])
        a.close()
    assert [c.error for c in out] == [None, None] and out[0].texts[0] and out[0].prompt_tokens is not None
