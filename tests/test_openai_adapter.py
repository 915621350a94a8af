"""The OpenAI-compatible adapter against a scripted server over real HTTP.

Every test drives the real ``openai`` client (AsyncOpenAI) against
``tests/openai_stub.py`` on 127.0.0.1: retries and what is not retried,
timeouts, per-request errors, order and the concurrency bound, a server that
dies mid-pass, secrets, and the fail-fast health check.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from openai_stub import Reply, StubServer, echo, echo_text, fail_first, script

from harness.adapters import preflight_judge
from harness.adapters.openai import OpenAIAdapter, health_check
from harness.core.errors import EngineError, UsageError
from harness.core.models import ModelSpec
from harness.core.records import Message, Request

FAST = {"backoff": 0.01, "max_backoff": 0.05}  # retries without waiting in tests


def chat(i: int, **kw) -> Request:
    return Request(id=f"q{i}", messages=(Message("system", "be brief"), Message("user", f"question {i}")), **kw)


def adapter(stub: StubServer, concurrency: int = 8, **args) -> OpenAIAdapter:
    return OpenAIAdapter(ModelSpec("openai", "stub", {**FAST, **args}, stub.url), concurrency=concurrency)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_transient_status_then_succeeds(status):
    with StubServer(fail_first(2, status=status)) as stub:
        a = adapter(stub)
        out = a.generate([chat(0), chat(1)])
        a.close()
    assert [c.error for c in out] == [None, None]
    assert out[0].texts == (echo_text("question 0"),)
    assert stub.hits == {"question 0": 3, "question 1": 3}


def test_retry_after_header_is_honoured():
    with StubServer(fail_first(1, status=429, retry_after="0.4")) as stub:
        a = adapter(stub, backoff=0.001, max_backoff=5)
        t0 = time.monotonic()
        [c] = a.generate([chat(0)])
        waited = time.monotonic() - t0
        a.close()
    assert c.error is None and stub.count() == 2
    assert waited >= 0.4  # a lower bound: our own backoff alone would wait ~1 ms


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status):
    with StubServer(fail_first(99, status=status)) as stub:
        a = adapter(stub)
        [c] = a.generate([chat(0)])
        a.close()
    assert stub.count() == 1
    assert c.texts == () and c.error.startswith(f"HTTP {status} after 1 attempt")


def test_timeout_then_retry_succeeds(caplog):
    slow_then_fast = script([Reply(text="too late", delay=3.0)])
    with StubServer(slow_then_fast) as stub:
        a = adapter(stub, concurrency=1, timeout=0.5)
        with caplog.at_level("WARNING", logger="harness"):
            [c] = a.generate([chat(0)])
        a.close()
    assert c.error is None and c.texts == (echo_text("question 0"),)
    assert stub.count() == 2
    assert "timeout=SECONDS" in caplog.text  # the user learns how to stop this on slow servers


def test_errors_are_per_request_after_max_retries():
    def only_q1_fails(call):
        return Reply(status=500, text="boom") if call.content == "question 1" else echo(call)

    with StubServer(only_q1_fails) as stub:
        a = adapter(stub, max_retries=2)
        out = a.generate([chat(0), chat(1), chat(2)])
        a.close()
    assert [c.error is None for c in out] == [True, False, True]
    assert out[1].error.startswith("HTTP 500 after 3 attempts") and "boom" in out[1].error
    assert stub.hits["question 1"] == 3 and stub.hits["question 0"] == 1


def test_malformed_replies_are_errors_not_retried():
    bad = [Reply(raw=b"not json"), Reply(raw=b'{"choices": []}'),
           Reply(raw=b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}')]
    with StubServer(script(bad)) as stub:
        a = adapter(stub, concurrency=1)
        out = a.generate([chat(i) for i in range(4)])
        a.close()
    assert [c.error.split(" after")[0] if c.error else None for c in out] == ["malformed reply"] * 3 + [None]
    assert stub.count() == 4


def test_order_preserved_and_callbacks_in_calling_thread():
    # Later requests answer first: completion order is the reverse of request order.
    def reverse_delay(call):
        i = int(call.content.split()[-1])
        return Reply(text=f"answer {i}", delay=0.05 * (9 - i))

    seen: list[tuple[int, str, int]] = []
    with StubServer(reverse_delay) as stub:
        a = adapter(stub, concurrency=10)
        out = a.generate([chat(i) for i in range(10)],
                         on_result=lambda j, c: seen.append((j, c.texts[0], threading.get_ident())))
        a.close()
    assert [c.id for c in out] == [f"q{i}" for i in range(10)]
    assert [c.texts[0] for c in out] == [f"answer {i}" for i in range(10)]
    assert sorted(j for j, _, _ in seen) == list(range(10))
    assert all(text == f"answer {j}" for j, text, _ in seen)
    assert {tid for _, _, tid in seen} == {threading.get_ident()}
    assert seen[0][0] != 0  # callbacks came as requests finished, not in request order


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bound(concurrency):
    with StubServer(lambda call: Reply(text="ok", delay=0.15)) as stub:
        a = adapter(stub, concurrency=concurrency)
        out = a.generate([chat(i) for i in range(8)])
        a.close()
    assert all(c.error is None for c in out)
    assert stub.max_in_flight == concurrency  # whole batch submitted, never more than the bound


def test_request_fields_reach_the_server():
    with StubServer() as stub:
        a = adapter(stub)
        chat_req = chat(0, max_tokens=7, temperature=0.7, top_p=0.9, n=2, stop=("\n\n",), seed=11)
        raw_req = Request(id="p", prompt="def f():", max_tokens=5, stop=("\ndef",))
        c_chat, c_raw = a.generate([chat_req, raw_req])
        a.close()
    by_path = {c.path: c.body for c in stub.calls}
    body = by_path["/v1/chat/completions"]
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "question 0"}]
    assert {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "n", "stop", "seed")} == \
        {"model": "stub", "max_tokens": 7, "temperature": 0.7, "top_p": 0.9, "n": 2, "stop": ["\n\n"], "seed": 11}
    assert by_path["/v1/completions"]["prompt"] == "def f():" and "seed" not in by_path["/v1/completions"]
    assert len(c_chat.texts) == 2 and c_chat.finish_reasons == ("stop", "stop")
    assert c_chat.prompt_tokens == 2 and c_chat.completion_tokens == 2 * len(echo_text("question 0").split())
    assert c_raw.texts == (echo_text("def f():"),)


def test_server_gone_mid_pass_raises_engine_error_and_keeps_finished():
    def first_two_fast(call):
        return Reply(text="fast") if call.content in ("question 0", "question 1") else Reply(text="x", delay=0.5)

    finished: dict[int, str] = {}
    with StubServer(first_two_fast) as stub:
        a = adapter(stub, concurrency=6, max_retries=2)

        def on_result(j, comp):
            finished[j] = comp.texts[0]
            if len(finished) == 2:
                stub.kill()

        with pytest.raises(EngineError, match=r"unreachable \(connection refused\).*2 of 6 requests"):
            a.generate([chat(i) for i in range(6)], on_result=on_result)
        a.close()
    assert finished == {0: "fast", 1: "fast"}


def test_failing_callback_cancels_the_pass_and_adapter_stays_usable():
    def slow_after_two(call):
        fast = call.content in ("question 0", "question 1")
        return Reply(text="ok", delay=0 if fast else 0.3)

    class Stop(Exception):
        pass

    def on_result(j, comp):
        raise Stop  # e.g. the journal's disk is full

    with StubServer(slow_after_two) as stub:
        a = adapter(stub, concurrency=2)
        with pytest.raises(Stop):
            a.generate([chat(i) for i in range(8)], on_result=on_result)
        assert stub.count() <= 4  # the rest of the pass was cancelled, not sent
        [c] = a.generate([chat(9)])
        a.close()
    assert c.error is None


def test_dropped_connection_on_a_live_server_is_a_per_request_error():
    def drop_q1(call):
        return Reply(drop=True) if call.content == "question 1" else echo(call)

    with StubServer(drop_q1) as stub:
        a = adapter(stub, max_retries=1)
        out = a.generate([chat(0), chat(1)])
        a.close()
    assert out[0].error is None
    assert out[1].error.startswith("APIConnectionError after 2 attempts")
    assert stub.hits["question 1"] == 2


def test_keys_never_in_describe_or_errors(monkeypatch):
    key = "sk-test-Zq81ThisIsASecretValue"
    monkeypatch.setenv("JUDGE_KEY", key)  # a name the generic env scrubber would not recognise

    def leaky_401(call):  # servers echo (parts of) the key back, as OpenAI's 401 does
        return Reply(status=401, text=f"Incorrect API key provided: {key} / {key[:8]}***{key[-4:]}")

    with StubServer(leaky_401) as stub:
        a = OpenAIAdapter(ModelSpec("openai", "stub", {**FAST, "api_key_env": "JUDGE_KEY"}, stub.url))
        [c] = a.generate([chat(0)])
        desc = json.dumps(a.describe())
        a.close()
    assert stub.calls[0].authorization == f"Bearer {key}"  # the key is used...
    assert c.error and key not in c.error and key[:8] not in c.error  # ...and never shown
    assert key not in desc and "JUDGE_KEY" not in desc
    assert json.loads(desc) == {"kind": "openai", "model": "stub", "base_url": stub.url}


def test_describe_strips_credentials_from_url():
    with StubServer() as stub:
        url = stub.url.replace("http://", "http://user:pa55word@") + "?token=abc"
        a = OpenAIAdapter(ModelSpec("openai", "stub", {}, url))
        assert a.describe()["base_url"] == stub.url
        a.close()


@pytest.mark.parametrize(("args", "match"), [
    ({"temprature": 0.1}, "unknown option"),
    ({"api_key": "sk-abc"}, "api_key_env"),
    ({"api_key_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE"),
    ({"max_retries": -1}, "max_retries"),
    ({"timeout": 0}, "timeout"),
])
def test_bad_model_args_are_usage_errors(args, match):
    with pytest.raises(UsageError, match=match):
        OpenAIAdapter(ModelSpec("openai", "stub", args, "http://127.0.0.1:9/v1"), check=False)


def test_health_check_fails_fast_on_closed_port():
    spec = ModelSpec("openai", "judge", {}, f"http://127.0.0.1:{closed_port()}/v1")
    t0 = time.monotonic()
    with pytest.raises(UsageError) as err:
        preflight_judge(spec)
    assert time.monotonic() - t0 < HEALTH_BOUND  # no waiting on timeouts for a refused connection
    msg = str(err.value)
    assert "is unreachable (connection refused)" in msg and "--judge-base-url" in msg and "\n" not in msg


HEALTH_BOUND = 4.0  # two tries 0.5 s apart; a timeout-based failure would take 2 x 5 s


def test_model_endpoint_checked_when_adapter_is_built():
    with pytest.raises(UsageError, match=r"model endpoint .* unreachable .* --base-url"):
        OpenAIAdapter(ModelSpec("openai", "m", {}, f"http://127.0.0.1:{closed_port()}/v1"))


def test_health_check_names_served_models():
    with StubServer(models=("served-a", "served-b")) as stub:
        with pytest.raises(UsageError, match="does not serve model 'other'.*served-a, served-b"):
            health_check(ModelSpec("openai", "other", {}, stub.url), role="model")
        health_check(ModelSpec("openai", "other", {"check_model": False}, stub.url), role="model")
        health_check(ModelSpec("openai", "served-b", {}, stub.url), role="judge")
        assert stub.count() == 0  # only GET /models


def test_base_url_without_v1_or_scheme_is_a_usage_error():
    with StubServer() as stub:
        root = stub.url.removesuffix("/v1")
        with pytest.raises(UsageError, match=f"answered 404 to GET /models.*pass --base-url {root}/v1"):
            health_check(ModelSpec("openai", "stub", {}, root), role="model")
    with pytest.raises(UsageError, match="not an http"):
        health_check(ModelSpec("openai", "stub", {}, "127.0.0.1:8000/v1"), role="judge")


def test_openai_without_key_or_url_is_a_usage_error():
    with pytest.raises(UsageError, match="OPENAI_API_KEY is not set"):
        health_check(ModelSpec("openai", "gpt-4", {}, None))


# -- stop strings beyond what the endpoint accepts (issue 17.10) ---------------------------------

HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def test_more_stop_strings_than_the_endpoint_accepts_are_cut_locally():
    # OpenAI refuses more than 4 stop strings with a 400; HumanEval completion mode has 5.
    text = "    return x\n\n#comment\ndef g():\n    pass"
    with StubServer(lambda call: Reply(text=text), max_stop=4) as stub:
        a = adapter(stub)
        [c] = a.generate([Request(id="p", prompt="def f(x):\n", max_tokens=32, stop=HUMANEVAL_STOPS)])
        a.close()
    assert c.error is None, c.error
    assert stub.calls[0].body["stop"] == list(HUMANEVAL_STOPS[:4])  # what the endpoint accepts
    assert c.texts == ("    return x\n",)  # the 5th ("\n#") cut here, before the server's "\ndef "
    assert c.finish_reasons == ("stop",)


def test_max_stop_model_arg_raises_the_limit_for_servers_that_accept_more():
    with StubServer(lambda call: Reply(text="a\n#b")) as stub:
        a = adapter(stub, max_stop=8)
        [c] = a.generate([Request(id="p", prompt="x", stop=HUMANEVAL_STOPS)])
        a.close()
    assert stub.calls[0].body["stop"] == list(HUMANEVAL_STOPS) and c.texts == ("a",)


# -- credentials and query strings in the base URL (issue 12.11) ---------------------------------

PLANTED = "Planted-Secret-7f3a9c"


def secret_url(stub: StubServer) -> str:
    return stub.url.replace("http://", f"http://alice:{PLANTED}pw@") + f"?api-version=2024&token={PLANTED}"


def test_query_string_and_userinfo_are_sent_correctly_and_never_shown():
    with StubServer() as stub:
        a = OpenAIAdapter(ModelSpec("openai", "stub", dict(FAST), secret_url(stub)))
        [c, raw] = a.generate([chat(0), Request(id="p", prompt="def f():", max_tokens=4)])
        desc = json.dumps(a.describe())
        a.close()
    assert c.error is None and raw.error is None, (c.error, raw.error)
    assert {call.path for call in stub.calls} == {"/v1/chat/completions", "/v1/completions"}
    assert all(call.query == {"api-version": "2024", "token": PLANTED} for call in stub.calls)
    assert PLANTED not in desc and "alice" not in desc


def test_userinfo_becomes_basic_auth_when_no_key_is_set():
    import base64

    with StubServer() as stub:
        a = OpenAIAdapter(ModelSpec("openai", "stub", dict(FAST), secret_url(stub)))
        a.generate([chat(0)])
        a.close()
    expected = base64.b64encode(f"alice:{PLANTED}pw".encode()).decode()
    assert stub.calls[0].authorization == f"Basic {expected}"


def test_errors_never_show_the_planted_secret():
    def leaky(call):  # a server that echoes the URL it was called with
        return Reply(status=400, text=f"bad request to /v1/chat/completions?token={PLANTED}")

    with StubServer(leaky) as stub:
        a = OpenAIAdapter(ModelSpec("openai", "stub", dict(FAST), secret_url(stub)))
        [c] = a.generate([chat(0)])
        a.close()
    assert c.error and "HTTP 400" in c.error and PLANTED not in c.error
    with pytest.raises(UsageError) as err:
        health_check(ModelSpec("openai", "m", {}, secret_url(stub)), role="model")  # the stub is gone now
    assert "unreachable" in str(err.value) and PLANTED not in str(err.value) and "alice" not in str(err.value)


@pytest.mark.parametrize(("url", "match"), [
    ("http://127.0.0.1:99999/v1", "port 99999 is out of range"),
    ("http://127.0.0.1:abc/v1", "port 'abc' is not a number"),
    ("http://[::1/v1", "unclosed '\\[' in the host"),
    ("http:///v1", "no host"),
    ("ftp://127.0.0.1/v1", "not an http"),
])
def test_malformed_base_urls_are_usage_errors(url, match):
    from harness.core.models import parse_model_spec

    with pytest.raises(UsageError, match=f"--base-url .*{match}"):
        parse_model_spec("openai:m", base_url=url)


def test_judge_base_url_with_a_bad_port_names_the_judge_flag():
    from harness.core.models import parse_model_spec

    with pytest.raises(UsageError, match="--judge-base-url .*port 70000 is out of range"):
        parse_model_spec("openai:j", base_url="http://127.0.0.1:70000/v1", flag="--judge")
