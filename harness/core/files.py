"""The file kernel: every JSONL read, checksummed data read and atomic write goes through here.

* ``read_jsonl`` / ``read_jsonl_numbered``: one JSON object per line, ``.gz``
  read transparently, blank lines skipped; a bad line fails as a UsageError
  naming ``file:line``, what was wrong and what was expected.
* ``read_verified``: a packaged data file checked against the ``SHA256SUMS``
  next to it (``sha256sum`` format) before anything reads it.
* ``write_json_atomic`` / ``write_jsonl_atomic``: temp file, fsync, rename, so
  a reader (or a resumed run) never sees half a file; NaN and infinities are
  written as null (strict JSON for every reader).

The journal (harness/core/journal.py) is the one other JSONL format: its
lines carry checksums and a torn line is dropped, not refused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError

CHECKSUMS = "SHA256SUMS"


# -- reading -------------------------------------------------------------------------------------

Check = Callable[[dict[str, Any]], str | None]  # a row's problem in words, or None


def parse_jsonl(text: str, source: str, required: Sequence[str] = (),
                check: Check | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``text``; ``source`` names it in errors.
    ``check`` may object to a row (its words follow ``file:line:``)."""
    expected = "expected one JSON object per line" + (f" with fields {', '.join(required)}" if required else "")
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}:{lineno}: not valid JSON ({exc.msg}); {expected}") from None
        if not isinstance(row, dict):
            raise UsageError(f"{source}:{lineno}: got a JSON {type(row).__name__}; {expected}")
        missing = [k for k in required if k not in row]
        if missing:
            raise UsageError(f"{source}:{lineno}: missing field(s) {', '.join(missing)}; {expected}")
        if check is not None and (problem := check(row)):
            raise UsageError(f"{source}:{lineno}: {problem}")
        rows.append((lineno, row))
    return rows


def read_text(path: Path) -> str:
    """A UTF-8 file's text (``.gz`` decompressed); unreadable or corrupt files are a UsageError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        return (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}); check the path") from None
    except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt ({exc}); expected UTF-8 JSON lines (gzip if .gz)") from None


def read_jsonl_numbered(path: Path, required: Sequence[str] = (),
                        check: Check | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per line of a JSONL(.gz) file, for callers that cite lines later."""
    return parse_jsonl(read_text(path), str(path), required, check)


def read_jsonl(path: Path, required: Sequence[str] = (), check: Check | None = None) -> list[dict[str, Any]]:
    """The objects of a JSONL(.gz) file, each with the ``required`` fields and passing ``check``."""
    return [row for _, row in read_jsonl_numbered(path, required, check)]


# -- checksummed data ----------------------------------------------------------------------------

def read_checksums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` of a folder as {file name: hex digest}."""
    path = Path(folder) / CHECKSUMS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}); reinstall sft-harness") from None
    sums = {}
    for line in lines:
        if line.strip():
            digest, _, name = line.strip().partition(" ")
            sums[name.strip().lstrip("*")] = digest  # "*" marks binary mode in sha256sum output
    return sums


def read_verified(folder: Path, name: str, *, gzipped: bool = False) -> bytes:
    """The bytes of ``folder/name`` after checking them against ``folder/SHA256SUMS``.

    ``gzipped``: the file on disk is ``name + ".gz"`` and the checksum (listed
    under ``name``) covers its decompressed bytes, which are returned.
    """
    folder = Path(folder)
    path = folder / (name + ".gz" if gzipped else name)
    expected = read_checksums(folder).get(name)
    try:
        raw = path.read_bytes()
        if gzipped:
            raw = gzip.decompress(raw)
    except OSError as exc:
        raise UsageError(f"packaged {path} cannot be read ({exc.strerror}); reinstall sft-harness") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"packaged {path} is corrupt ({exc}); reinstall sft-harness") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        raise UsageError(f"packaged {path} fails its checksum (sha256 {digest[:12]}..., expected "
                         f"{str(expected)[:12]}... from {CHECKSUMS}); reinstall sft-harness")
    return raw


# -- atomic writes -------------------------------------------------------------------------------

def strict_json(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON for every reader, not just Python's."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def _replace_atomically(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write a whole JSONL file atomically (temp file + fsync + rename)."""
    _replace_atomically(path, "".join(json.dumps(strict_json(row), ensure_ascii=False, allow_nan=False) + "\n"
                                      for row in rows))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write a JSON document atomically, indented, with a final newline."""
    _replace_atomically(path, json.dumps(strict_json(obj), indent=2, ensure_ascii=False, default=str,
                                         allow_nan=False) + "\n")
