"""OpenAI-compatible endpoints: ``vllm serve``, TGI, llama.cpp server, OpenAI itself.

One client for models under test and for judges (MT-Bench uses this adapter):

    harness run --model openai:Qwen2.5-7B-Instruct --base-url http://127.0.0.1:8000/v1 --suite gsm8k
    harness run --model hf:ckpt --suite mt_bench --judge openai:gpt-4          # OPENAI_API_KEY set

A pass is submitted at once through ``asyncio`` with at most ``concurrency``
requests in flight. Chat requests go to ``/chat/completions``, raw-prompt
requests (HumanEval completion mode) to ``/completions``. One ``AsyncOpenAI``
client (one pooled HTTP client, connections kept alive) serves every pass of
an adapter; requests go through its plain ``post`` with a JSON body and the
reply is read as JSON, which skips the SDK's per-call parameter transform and
response models (about 13 ms of CPU a call on a loaded 2-core box, more than
the rest of the client together) and keeps its auth, headers and errors.

Retries live here and only here (the ``openai`` client's own retries are off):
429, 408, 5xx, timeouts and connection errors are retried with exponential
backoff and jitter, at most ``max_retries`` times; 400/401/404 and malformed
replies are not. A request still failing after its retries becomes a
``Completion`` with ``error`` set (scrubbed of secrets). An endpoint that
refuses connections through a whole retry window is gone: the pass stops with
``EngineError``, and what finished was already handed to ``on_result``.

API keys come only from the environment (``OPENAI_API_KEY``, or the variable
named by ``--model-args api_key_env=VAR``) and never appear in ``describe()``,
errors or logs. Options (``--model-args``): ``timeout`` (s per request, 120),
``max_retries`` (4), ``backoff`` (first retry delay in s, 0.5), ``max_backoff``
(30), ``api_key_env``, ``check_model`` (true: the health check requires the
model to be listed by ``/models`` when the server lists any), ``max_stop`` (4:
OpenAI's API refuses more stop strings; the first ``max_stop`` are sent and
the rest are cut from the reply here, which gives the same text).

A base URL may carry ``user:password@`` (sent as HTTP Basic auth when no API
key is set) and a query string (``?api-version=...``, sent with every
request); both are redacted wherever the URL is recorded or printed. Options
and endpoint resolution live in ``openai_endpoint.py``; log-likelihood scoring
(``/completions`` with ``echo``) in ``openai_scoring.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from harness.adapters.openai_endpoint import (  # noqa: F401  (display_url, OPENAI_URL: re-exported)
    NO_KEY,
    OPENAI_URL,
    ClientOptions,
    Endpoint,
    Role,
    display_url,
    resolve_endpoint,
)
from harness.core.env import scrub
from harness.core.errors import EngineError, UsageError
from harness.core.models import ModelSpec
from harness.core.records import (
    Completion,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    OnResult,
    OnScore,
    Request,
)

log = logging.getLogger("harness")

HEALTH_TIMEOUT = 5.0
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_*.-]{6,})|(Bearer\s+\S+)", re.I)


class _ServerGone(Exception):
    """A request could not connect through its whole retry window."""


class OpenAIAdapter:
    """Adapter over an OpenAI-compatible endpoint (see module docstring)."""

    def __init__(self, spec: ModelSpec, concurrency: int = 16, *, role: Role = "model",
                 check: bool = True) -> None:
        import openai

        if concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
        self.spec = spec
        self.model = spec.target
        self.concurrency = concurrency
        self.options = ClientOptions.from_args(dict(spec.args), flag="--judge-args" if role == "judge" else "--model-args")
        self.endpoint = resolve_endpoint(spec, self.options, role)
        self.name = f"openai:{spec.target}"
        _quiet_http_logs()
        if check:
            health_check(spec, role)
        self._openai = openai
        self._warned_timeout = False
        self._score_max_tokens: int | None = None  # set by the scoring probe: 0, or 1 where 0 is refused
        self._loop = asyncio.new_event_loop()
        self._client = openai.AsyncOpenAI(**self.endpoint.client_kwargs(), timeout=self.options.timeout,
                                          max_retries=0)
        self._raw = _response_class(openai)

    def describe(self) -> dict[str, Any]:
        # Generation-relevant identity only: no key, no retry/timeout settings.
        return {"kind": "openai", "model": self.model, "base_url": self.endpoint.display_url}

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Completion]:
        """All requests at once, bounded by the semaphore; ``on_result`` runs in this thread."""
        return self._run_pass(list(requests), on_result, self._call,
                              lambda r, error: Completion(id=r.id, error=error))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      on_result: OnScore | None = None) -> list[LoglikelihoodResult]:
        """Scores through ``POST /completions`` with ``echo``, ``logprobs=1`` and ``max_tokens=0``
        (``adapters/openai_scoring.py``); the endpoint is probed once before any request."""
        from harness.adapters.openai_scoring import check_chat_free, probe_scoring, score_call

        check_chat_free(requests, self.name)
        if requests and self._score_max_tokens is None:
            self._score_max_tokens = self._loop.run_until_complete(probe_scoring(self))
        return self._run_pass(list(requests), on_result, lambda r: score_call(self, r),
                              lambda r, error: LoglikelihoodResult(id=r.id, error=error))

    def _run_pass(self, requests: list[Any], on_result: Any, call: Any, failed: Any) -> list[Any]:
        if not requests:
            return []
        try:
            return self._loop.run_until_complete(self._generate(requests, on_result, call, failed))
        except BaseException:
            self._cancel_pending()  # Ctrl-C or a failing callback: no request left running
            raise

    def _cancel_pending(self) -> None:
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending and not self._loop.is_running():
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    async def _generate(self, requests: list[Any], on_result: Any, call: Any, failed: Any) -> list[Any]:
        sem = asyncio.Semaphore(self.concurrency)
        out: list[Any] = [None] * len(requests)
        tasks = [asyncio.ensure_future(self._one(i, r, sem, call, failed)) for i, r in enumerate(requests)]
        try:
            for fut in asyncio.as_completed(tasks):
                i, comp = await fut
                out[i] = comp
                if on_result is not None:
                    on_result(i, comp)
        except _ServerGone as exc:
            done = sum(c is not None for c in out)
            raise EngineError(f"{exc}; {done} of {len(requests)} requests of this pass had finished") from None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [c for c in out if c is not None]

    async def _one(self, i: int, req: Any, sem: asyncio.Semaphore, call: Any, failed: Any) -> tuple[int, Any]:
        async with sem:
            return i, await self._with_retries(req, call, failed)

    async def _with_retries(self, req: Any, call: Any, failed: Any) -> Any:
        """``call(req)`` with the retry policy; ``failed(req, error_text)`` is the result of a request
        that still fails after its retries (or fails for good)."""
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            try:
                return await call(req)
            except Exception as exc:  # every failure is classified below
                verdict = classify(exc, self._openai)
                last = attempt == attempts - 1
                if verdict == "connect" and last and not await self._alive():
                    raise _ServerGone(f"endpoint {self.endpoint.display_url} is unreachable "
                                      f"({connect_reason(exc)}) after {attempts} attempts: the server is gone") \
                        from None
                if verdict == "final" or last:
                    return failed(req, self._error_text(exc, attempt + 1))
                self._warn_timeout(exc)
                await asyncio.sleep(self._delay(attempt, exc))
        raise AssertionError("unreachable")

    def _warn_timeout(self, exc: Exception) -> None:
        # A retried timeout restarts the whole generation; on a slow server every retry times out again.
        if isinstance(exc, self._openai.APITimeoutError) and not self._warned_timeout:
            self._warned_timeout = True
            log.warning("%s: a request took longer than %g s and is retried from scratch; for slow servers "
                        "raise the limit with --model-args timeout=SECONDS", self.name, self.options.timeout)

    async def _alive(self) -> bool:
        """After a request's connection failures: is the server still there at all?"""
        try:
            await self._client.with_options(timeout=HEALTH_TIMEOUT).models.list()
        except self._openai.APITimeoutError:
            return True  # slow, not gone
        except self._openai.APIConnectionError:
            return False
        except Exception:  # any HTTP answer proves it is up
            return True
        return True

    def _delay(self, attempt: int, exc: Exception) -> float:
        """Exponential backoff with 'equal jitter'; a server's Retry-After is honoured up to max_backoff."""
        base = min(self.options.max_backoff, self.options.backoff * 2 ** attempt)
        delay = base / 2 + random.uniform(0, base / 2)
        retry_after = _retry_after(exc)
        return max(delay, min(retry_after, self.options.max_backoff)) if retry_after else delay

    def _error_text(self, exc: Exception, attempts: int) -> str:
        status = getattr(exc, "status_code", None)
        malformed = isinstance(exc, MalformedReply | ValueError | self._openai.APIResponseValidationError)
        what = "malformed reply" if malformed else f"HTTP {status}" if status else type(exc).__name__
        detail = str(exc).replace("\n", " ")[:300]
        return scrub_secrets(f"{what} after {attempts} attempt{'s' * (attempts > 1)}: {detail}",
                             self.endpoint.api_key)

    async def _call(self, req: Request) -> Completion:
        common: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
                                  "top_p": req.top_p, "n": req.n}
        sent = list(req.stop[:self.options.max_stop])
        if sent:
            common["stop"] = sent
        if req.seed is not None:
            common["seed"] = req.seed
        if req.prompt is not None:
            path, body = "/completions", {"prompt": req.prompt, **common}
        else:
            path, body = "/chat/completions", {"messages": [{"role": m.role, "content": m.content}
                                                            for m in req.messages], **common}
        raw = await self._client.post(path, body=body, cast_to=self._raw)  # non-2xx raises APIStatusError
        comp = _to_completion(req, _json_reply(raw))
        return cut_at_stops(comp, req.stop[len(sent):]) if len(sent) < len(req.stop) else comp


def _response_class(openai: Any) -> type:
    """The HTTP response class of the client the SDK is built on (httpx2 from openai 3, httpx before)."""
    base = openai._base_client
    return (getattr(base, "httpx2", None) or base.httpx).Response


def _json_reply(raw: Any) -> dict[str, Any]:
    try:
        data = raw.json()
    except ValueError as exc:
        raise MalformedReply(f"the reply is not JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise MalformedReply(f"the reply is a JSON {type(data).__name__}, not an object")
    return data


def _quiet_http_logs() -> None:
    """The HTTP client logs every request at INFO; the runner owns progress (one bar per pass)."""
    for name in ("httpx", "httpx2", "openai"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _to_completion(req: Request, reply: dict[str, Any]) -> Completion:
    """Validate the reply's shape (a JSON object); a malformed one raises MalformedReply (not retried)."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or len(choices) != req.n or not all(isinstance(c, dict) for c in choices):
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise MalformedReply(f"expected {req.n} choice(s), got {got}")
    choices = sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
    texts = []
    for c in choices:
        message = c.get("message")
        text = c.get("text") if req.prompt is not None else message.get("content") if isinstance(message, dict) \
            else None
        if not isinstance(text, str):
            raise MalformedReply(f"choice {c.get('index', '?')} carries no text")
        texts.append(text)
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    return Completion(id=req.id, texts=tuple(texts), prompt_tokens=_count(usage.get("prompt_tokens")),
                      completion_tokens=_count(usage.get("completion_tokens")),
                      finish_reasons=tuple(str(c.get("finish_reason") or "") for c in choices))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def cut_at_stops(comp: Completion, stops: Sequence[str]) -> Completion:
    """Cut each text at the earliest of ``stops`` (those the endpoint was not sent), as the
    server would have: what comes before the first stop string does not depend on what follows."""
    texts, reasons = list(comp.texts), list(comp.finish_reasons or [""] * len(comp.texts))
    for j, text in enumerate(texts):
        hits = [i for s in stops if s and (i := text.find(s)) >= 0]
        if hits:
            texts[j], reasons[j] = text[:min(hits)], "stop"
    return replace(comp, texts=tuple(texts), finish_reasons=tuple(reasons))


class MalformedReply(Exception):
    """The server answered 200 with a body that is not a usable completion."""


def classify(exc: BaseException, openai: Any) -> Literal["retry", "connect", "final"]:
    """retry: 408/429/5xx/timeouts; connect: cannot reach the server (retried, then fatal);
    final: everything else (400/401/404/422, malformed replies): not retried."""
    if isinstance(exc, openai.APITimeoutError):
        return "retry"
    if isinstance(exc, openai.APIConnectionError):
        return "connect"
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return "retry" if code in (408, 429) or code >= 500 else "final"
    return "final"


def connect_reason(exc: BaseException) -> str:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in chain):
        return "connection refused"
    return f"cannot connect: {chain[-1]}" if str(chain[-1]) else "cannot connect"


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: our own backoff applies


def scrub_secrets(text: str, key: str | None = None) -> str:
    """Remove the key in use, any credential from the environment, and key-like tokens."""
    if key and key != NO_KEY:
        text = text.replace(key, "<redacted>")
    return _KEYLIKE.sub("<redacted>", scrub(text))


def health_check(spec: ModelSpec, role: Role = "judge", timeout: float = HEALTH_TIMEOUT, tries: int = 2) -> None:
    """One fast ``GET /models`` before any work: an unreachable endpoint, a rejected key or
    (with check_model) a model the server does not serve is a UsageError (exit 2)."""
    import openai

    _quiet_http_logs()
    opts = ClientOptions.from_args(dict(spec.args), flag="--judge-args" if role == "judge" else "--model-args")
    ep = resolve_endpoint(spec, opts, role)
    flag = "--judge-base-url" if role == "judge" else "--base-url"
    client = openai.OpenAI(**ep.client_kwargs(), timeout=timeout, max_retries=0)
    try:
        listed = _list_models(client, ep, role, flag, timeout, tries)
    finally:
        client.close()
    if opts.check_model and listed and spec.target not in listed:
        args_flag = "--judge-args" if role == "judge" else "--model-args"
        raise UsageError(f"{role} endpoint {ep.display_url} does not serve model {spec.target!r}; it serves: "
                         f"{', '.join(sorted(listed)[:10])} (pass {role == 'judge' and '--judge' or '--model'} "
                         f"openai:NAME with one of them, or {args_flag} check_model=false)")


def _list_models(client: Any, ep: Endpoint, role: Role, flag: str, timeout: float, tries: int) -> list[str]:
    import openai

    for attempt in range(tries):
        try:
            return [m.id for m in client.models.list().data]
        except openai.APITimeoutError:
            reason = f"no answer within {timeout:g} s"
        except openai.APIConnectionError as exc:
            reason = connect_reason(exc)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise UsageError(f"{role} endpoint {ep.display_url} rejected the API key (HTTP {exc.status_code}); "
                             "set OPENAI_API_KEY or model-args api_key_env=VAR") from None
        except openai.NotFoundError:
            if not ep.display_url.endswith("/v1"):
                raise UsageError(f"{role} endpoint {ep.display_url} answered 404 to GET /models; OpenAI-compatible "
                                 f"servers serve under /v1: pass {flag} {ep.display_url}/v1") from None
            log.warning("%s endpoint %s has no GET /models (404); going on", role, ep.display_url)
            return []
        except openai.APIStatusError as exc:
            log.warning("%s endpoint %s answered GET /models with HTTP %s; going on", role, ep.display_url,
                        exc.status_code)
            return []  # it answers: reachable, even if it does not list models
        except Exception as exc:  # a non-JSON /models reply still proves the server is up
            log.warning("%s endpoint %s: unexpected /models reply (%s); going on", role, ep.display_url,
                        type(exc).__name__)
            return []
        if attempt + 1 < tries:
            time.sleep(0.5)
    raise UsageError(f"{role} endpoint {ep.display_url} is unreachable ({reason}); start the server or fix {flag}")
