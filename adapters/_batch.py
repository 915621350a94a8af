"""The HF adapter's ``batch_size`` option, parsed without importing torch (preflight runs it)."""

from __future__ import annotations

from typing import Any

from harness.core.errors import UsageError


def parse_batch_size(value: Any, flag: str = "--model-args") -> int | None:
    """HF's ``batch_size``: ``auto`` -> None (sized per generation pass), else a positive integer."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if size < 1:
        raise UsageError(f"{flag} batch_size={value!r} is not a positive integer or auto")
    return size
