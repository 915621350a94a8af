"""Where an OpenAI-compatible adapter sends requests, and with which options.

``ClientOptions`` are the ``--model-args`` the client understands (none changes
what is generated). ``resolve_endpoint`` turns a spec into an ``Endpoint``: the
base URL checked (``harness.core.models.check_base_url``) and split into a
clean URL, its query parameters (sent with every request) and its userinfo
(HTTP Basic auth when no API key is set), plus the API key from the
environment. Nothing here is ever printed with a secret in it: messages use
``display_url`` (no userinfo, no query).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from harness.core.errors import UsageError
from harness.core.models import ModelSpec, check_base_url

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # what local servers without --api-key accept

Role = Literal["model", "judge"]


@dataclass(frozen=True)
class ClientOptions:
    """``--model-args`` understood by this adapter (none changes what is generated)."""

    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    api_key_env: str | None = None
    check_model: bool = True
    max_stop: int = 4  # stop strings the endpoint accepts (OpenAI: 4); the rest are cut here

    @classmethod
    def from_args(cls, args: dict[str, Any], flag: str = "--model-args") -> ClientOptions:
        known = {f.name: f for f in fields(cls)}
        if "api_key" in args:
            raise UsageError(f"{flag}: api_key is not accepted on the command line (it would end up in shell "
                             "history and logs); export it and pass api_key_env=VAR, or set OPENAI_API_KEY")
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise UsageError(f"{flag}: unknown option(s) {', '.join(unknown)} for an openai: model; "
                             f"choose from: {', '.join(known)}")
        opts = cls(**args)
        if not (isinstance(opts.timeout, int | float) and opts.timeout > 0):
            raise UsageError(f"{flag}: timeout must be a positive number of seconds, got {opts.timeout!r}")
        if not (isinstance(opts.max_retries, int) and not isinstance(opts.max_retries, bool)
                and 0 <= opts.max_retries <= 20):
            raise UsageError(f"{flag}: max_retries must be an integer in 0..20, got {opts.max_retries!r}")
        if not (isinstance(opts.backoff, int | float) and isinstance(opts.max_backoff, int | float)
                and 0 <= opts.backoff <= opts.max_backoff):
            raise UsageError(f"{flag}: need 0 <= backoff <= max_backoff (seconds), got "
                             f"backoff={opts.backoff!r}, max_backoff={opts.max_backoff!r}")
        if not (isinstance(opts.max_stop, int) and not isinstance(opts.max_stop, bool) and opts.max_stop >= 0):
            raise UsageError(f"{flag}: max_stop must be an integer >= 0 (stop strings sent to the endpoint), "
                             f"got {opts.max_stop!r}")
        if not isinstance(opts.check_model, bool):
            raise UsageError(f"{flag}: check_model must be true or false, got {opts.check_model!r}")
        return opts


@dataclass(frozen=True)
class Endpoint:
    """Where requests go. ``base_url`` carries neither userinfo nor query: the
    query goes with every request as ``query`` (the openai client would append
    paths after it), and ``user:password@`` becomes HTTP Basic auth when no API
    key is set (with a key, the key's Bearer header wins)."""

    base_url: str
    api_key: str
    query: dict[str, str] = field(default_factory=dict)
    basic_auth: str | None = None  # "user:password" from the URL

    @property
    def display_url(self) -> str:
        return display_url(self.base_url)

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"base_url": self.base_url, "api_key": self.api_key}
        if self.query:
            kwargs["default_query"] = dict(self.query)
        if self.basic_auth and self.api_key == NO_KEY:
            token = base64.b64encode(unquote(self.basic_auth).encode()).decode()
            kwargs["default_headers"] = {"Authorization": f"Basic {token}"}
        return kwargs


def split_url(url: str) -> tuple[str, dict[str, str], str | None]:
    """(URL without userinfo and query, query parameters, "user:password" or None)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return clean, dict(parse_qsl(parts.query, keep_blank_values=True)), userinfo if at else None


def display_url(url: str) -> str:
    """The URL without user:password@ or query string, safe to record and print."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def resolve_endpoint(spec: ModelSpec, opts: ClientOptions, role: Role = "model") -> Endpoint:
    flag = "--judge-base-url" if role == "judge" else "--base-url"
    base_url = spec.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    check_base_url(base_url, flag if spec.base_url else "OPENAI_BASE_URL")
    clean, query, userinfo = split_url(base_url)
    return Endpoint(clean, _api_key(spec, opts, role, clean), query, userinfo)


def _api_key(spec: ModelSpec, opts: ClientOptions, role: Role, base_url: str) -> str:
    if opts.api_key_env:
        key = os.environ.get(opts.api_key_env)
        if not key:
            raise UsageError(f"api_key_env={opts.api_key_env}: that environment variable is not set; "
                             f"export {opts.api_key_env}=... (keys are read only from the environment)")
        return key
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if display_url(base_url) == OPENAI_URL:
        flag = "--judge-base-url" if role == "judge" else "--base-url"
        raise UsageError(f"{role} openai:{spec.target} uses api.openai.com but OPENAI_API_KEY is not set; "
                         f"export it, or pass {flag} for a local server")
    return NO_KEY
