"""Durable, checksummed append-only JSONL journals: the files between stages.

Every completion, execution verdict and judgment is appended as it finishes.
Each line is a self-contained record carrying a checksum of its own content,
so a line torn by ``kill -9`` is detected on read and dropped with a warning
(never a crash, never a half record). Each record is flushed to the OS as it is
appended (``kill -9`` loses only the records in flight) and fsynced in small
batches (a power loss loses at most the last batch).

Records are keyed; reading keeps the last valid record per key, so a resumed
run never holds an item twice. Whole files (config, summary, samples) are
written by harness/core/files.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("harness")

_CRC = "_crc"


def _checksum(record: dict[str, Any]) -> str:
    blob = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != _CRC}
    return json.dumps({**body, _CRC: _checksum(body)}, ensure_ascii=False) + "\n"


def decode(line: str) -> dict[str, Any] | None:
    """The record on this line, or None if it is torn or corrupted."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or _CRC not in rec:
        return None
    crc = rec.pop(_CRC)
    return rec if crc == _checksum(rec) else None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Valid records of a journal in file order; invalid lines are skipped with a warning."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = decode(line)
            if rec is None:
                log.warning("%s:%d: dropped a torn or corrupted record (a crash mid-write); it will be redone",
                            path, lineno)
                continue
            yield rec


class Journal:
    """Keyed append-only journal. ``get(key)`` sees records from earlier runs."""

    def __init__(self, path: Path, *, fsync_every: int = 16, fsync_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        for rec in read_records(self.path):
            self._records[rec["key"]] = rec
        self._repair_tail()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._pending = 0
        self._last_sync = time.monotonic()
        self._fsync_every = fsync_every
        self._fsync_seconds = fsync_seconds

    def _repair_tail(self) -> None:
        # A torn last line has no newline; appending after it would glue the
        # next record onto it. Terminate it so it stays a separate bad line.
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def values(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def append(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        self._fh.write(encode(rec))
        # Every record reaches the OS at once, so a killed process loses nothing it
        # finished; fsync (power loss) is batched because it costs milliseconds.
        self._fh.flush()
        self._records[key] = rec
        self._pending += 1
        if self._pending >= self._fsync_every or time.monotonic() - self._last_sync > self._fsync_seconds:
            self.sync()

    def sync(self) -> None:
        if self._pending:
            os.fsync(self._fh.fileno())
            self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
