"""A scripted OpenAI-compatible server on 127.0.0.1 for tests and benches.

Standard library only (``http.server.ThreadingHTTPServer``): one thread per
connection, so slow replies overlap as they would on a real server. It serves
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``.
What it answers is decided per request by a *behaviour*: a callable that gets
a ``Call`` (path, JSON body, the request's content, which attempt this is for
that content) and returns a ``Reply`` (text, HTTP status, raw malformed body,
delay) or just the text. The server records every call, counts hits per
content and tracks the most requests it held in flight at once.

    from openai_stub import StubServer, fail_first

    with StubServer(fail_first(2, status=429)) as stub:     # 2 x 429, then echo
        ...  # point a client at stub.url ("http://127.0.0.1:PORT/v1")
        assert stub.count("/v1/chat/completions") == 3

Standalone, for benches and manual runs (fixed latency, echo replies):

    python tests/openai_stub.py --port 8000 --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class Call:
    """One request the stub received."""

    path: str
    body: Mapping[str, Any]
    content: str  # last user message (chat) or the prompt (completions)
    attempt: int  # 1 for the first request with this content, 2 for its first retry, ...
    authorization: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)  # the URL's query parameters


@dataclass(frozen=True)
class Reply:
    """What to answer. ``raw`` is sent as the body verbatim (malformed replies);
    otherwise a well-formed completion carrying ``text`` (or an error object
    when ``status`` is not 200). ``delay`` seconds pass before anything is sent.
    ``drop`` closes the connection without answering (a crashed worker)."""

    text: str = ""
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None
    drop: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


Behaviour = Callable[[Call], "Reply | str"]


def echo_text(content: str) -> str:
    """Deterministic text for a content, ending in a GSM8K-style final answer."""
    digest = hashlib.sha256(content.encode()).hexdigest()
    return f"echo {digest[:8]}\n#### {int(digest[:4], 16) % 100}"


def echo(call: Call) -> Reply:
    return Reply(text=echo_text(call.content))


def fail_first(k: int, status: int = 500, then: Behaviour = echo, retry_after: str | None = None) -> Behaviour:
    """Each content fails its first ``k`` attempts with ``status``, then ``then`` answers."""
    headers = {"Retry-After": retry_after} if retry_after else {}

    def behaviour(call: Call) -> Reply | str:
        if call.attempt <= k:
            return Reply(status=status, text=f"scripted {status}", headers=headers)
        return then(call)
    return behaviour


def script(replies: Iterable[Reply | str], then: Behaviour = echo) -> Behaviour:
    """Replies handed out in arrival order, whatever the content; then ``then``."""
    queue = list(replies)
    lock = threading.Lock()

    def behaviour(call: Call) -> Reply | str:
        with lock:
            if queue:
                return queue.pop(0)
        return then(call)
    return behaviour


def answers(by_content: Callable[[str], str | None], then: Behaviour = echo) -> Behaviour:
    """Answer from a lookup on the content (e.g. the right GSM8K solution for a question)."""
    def behaviour(call: Call) -> Reply | str:
        text = by_content(call.content)
        return then(call) if text is None else Reply(text=text)
    return behaviour


class StubServer:
    """The server; a context manager that starts it on a free port and stops it."""

    def __init__(self, behaviour: Behaviour = echo, models: tuple[str, ...] = ("stub",), latency: float = 0.0,
                 port: int = 0, max_stop: int | None = None, scoring: bool = True) -> None:
        self.behaviour = behaviour
        self.scoring = scoring  # answer echo=true + logprobs (prompt scoring), as vllm serve does
        self.max_stop = max_stop  # refuse more stop strings than this with a 400, as OpenAI refuses more than 4
        self.models = models
        self.latency = latency  # added to every completion call, before the behaviour's own delay
        self.calls: list[Call] = []
        self.hits: Counter[str] = Counter()  # content -> requests seen
        self.in_flight = 0
        self.max_in_flight = 0
        self.dead = False  # set by kill(): open connections are dropped, new ones refused
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self, path: str | None = None) -> int:
        """Requests received on ``path`` (all completion endpoints when None)."""
        with self._lock:
            return sum(1 for c in self.calls if (c.path == path if path else c.path in ENDPOINTS))

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.hits.clear()
            self.max_in_flight = self.in_flight

    def start(self) -> StubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def kill(self) -> None:
        """Die like a crashed server: refuse new connections and answer nothing more."""
        self.dead = True
        self.stop()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called from handler threads -------------------------------------------------------------

    def _record(self, path: str, body: Mapping[str, Any], authorization: str | None,
                query: Mapping[str, str]) -> Call:
        content = _content(path, body)
        with self._lock:
            self.hits[content] += 1
            call = Call(path=path, body=body, content=content, attempt=self.hits[content],
                        authorization=authorization, query=query)
            self.calls.append(call)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return call

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the default backlog of 5 drops bursts of 64 new connections (1 s SYN retry)


def _content(path: str, body: Mapping[str, Any]) -> str:
    if path == "/v1/completions":
        prompt = body.get("prompt", "")
        return prompt if isinstance(prompt, str) else json.dumps(prompt)
    users = [m.get("content", "") for m in body.get("messages", ()) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        # TCP_NODELAY, as real servers (uvicorn) set it: the headers and the body go out in two writes, and
        # without it Nagle held the body back until the client's delayed ACK, ~40 ms later, on every reply.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if stub.dead:
                self.close_connection = True
                return
            if urlsplit(self.path).path.rstrip("/") == "/v1/models":
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in stub.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())
            else:
                self._send(404, _error_body(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if stub.dead:
                self.close_connection = True
                return
            url = urlsplit(self.path)
            if url.path not in ENDPOINTS:
                self._send(404, _error_body(404, f"no route {self.path}"))
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, _error_body(400, "request body is not JSON"))
                return
            call = stub._record(url.path, body, self.headers.get("Authorization"), dict(parse_qsl(url.query)))
            refusal = _refusal(stub, body)
            if refusal is not None:
                stub._done()
                self._send(400, _error_body(400, refusal))
                return
            try:
                reply = stub.behaviour(call)
                reply = Reply(text=reply) if isinstance(reply, str) else reply
                time.sleep(stub.latency + reply.delay)
                if reply.drop or stub.dead:
                    self.close_connection = True  # no response at all: the client sees a dropped connection
                    return
                self._send(reply.status, _reply_body(call, reply), reply.headers)
            finally:
                stub._done()

        def _send(self, status: int, payload: bytes, headers: Mapping[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to do

    return Handler


def _refusal(stub: StubServer, body: Mapping[str, Any]) -> str | None:
    """A 400 the way OpenAI words it, for request shapes this stub is told to refuse."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if stub.max_stop is not None and len(stops) > stub.max_stop:
        return (f"Invalid 'stop': array too long. Expected an array with maximum length {stub.max_stop}, "
                f"but got an array with length {len(stops)} instead.")
    if body.get("echo") and not stub.scoring:
        return "echo is not supported for this model"
    return None


def char_logprob(ch: str) -> float:
    """The stub's 'model' for echo scoring: one token per character, a fixed log-probability each."""
    return -((ord(ch) % 7) + 1) / 8


def char_top(ch: str) -> str:
    """The stub's argmax token at the position of ``ch``: ``ch`` itself unless ord(ch) is a multiple of 3."""
    return ch if ord(ch) % 3 else "#"


def _echo_logprobs(prompt: str) -> dict[str, Any]:
    values = [None] + [char_logprob(c) for c in prompt[1:]]
    tops = [None] + [{char_top(c): char_logprob(c) if char_top(c) == c else -0.01} for c in prompt[1:]]
    return {"tokens": list(prompt), "token_logprobs": values, "top_logprobs": tops,
            "text_offset": list(range(len(prompt)))}


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "stub_error", "code": status}}).encode()


def _reply_body(call: Call, reply: Reply) -> bytes:
    if reply.raw is not None:
        return reply.raw
    if reply.status != 200:
        return _error_body(reply.status, reply.text or f"scripted {reply.status}")
    body = call.body
    n = int(body.get("n") or 1)
    text = _apply_stop(reply.text, body.get("stop"))
    usage = {"prompt_tokens": len(call.content.split()), "completion_tokens": len(text.split()) * n}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    common = {"id": f"stub-{len(call.content)}", "created": 0, "model": body.get("model", "stub"), "usage": usage}
    if call.path == "/v1/completions" and body.get("echo"):
        prompt = call.content
        generated = text[:1] if body.get("max_tokens") else ""
        logprobs = _echo_logprobs(prompt + generated)
        choices = [{"index": i, "text": prompt + generated, "finish_reason": "length", "logprobs": logprobs}
                   for i in range(n)]
        return json.dumps({**common, "object": "text_completion", "choices": choices}).encode()
    if call.path == "/v1/completions":
        choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(n)]
        return json.dumps({**common, "object": "text_completion", "choices": choices}).encode()
    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
               for i in range(n)]
    return json.dumps({**common, "object": "chat.completion", "choices": choices}).encode()


def _apply_stop(text: str, stop: str | list[str] | None) -> str:
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if s and s in text:
            text = text[: text.index(s)]
    return text


def main() -> None:
    p = argparse.ArgumentParser(description="scripted OpenAI-compatible server (echo replies)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion call")
    p.add_argument("--model", action="append", default=None, help="model id(s) listed by /v1/models")
    args = p.parse_args()
    with StubServer(models=tuple(args.model or ["stub"]), latency=args.latency, port=args.port) as stub:
        print(f"serving on {stub.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
