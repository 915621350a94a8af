"""Run directories: plain names, one writer at a time, and never deleting what is not ours.

A run id is a plain directory name under ``--out`` (no path separators, no
``..``, not ``.``, not absolute), so ``--run-id`` can only ever name a child of
``--out``. A directory becomes a run when the harness creates it: it gets a
``.harness-run`` marker (runs written before the marker existed are
recognised by their ``config.json``). ``--fresh`` clears only such a
directory, and the runner calls it only after every preflight passed.

Concurrent runs into one directory would interleave their journals and
overwrite each other's summary: the first takes an exclusive ``fcntl`` lock
on ``.lock`` for its whole life, the second fails at once with one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO

from harness.core.errors import UsageError

MARKER = ".harness-run"
LOCK = ".lock"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a plain directory name, else a UsageError saying why not."""
    bad = None
    if not run_id.strip():
        bad = "is empty"
    elif run_id in (".", ".."):
        bad = "names the output directory itself or its parent"
    elif os.path.isabs(run_id) or "/" in run_id or "\\" in run_id or (os.altsep and os.altsep in run_id):
        bad = "contains a path separator"
    elif "\x00" in run_id or any(ord(c) < 32 for c in run_id):
        bad = "contains a control character"
    if bad:
        raise UsageError(f"--run-id {run_id!r} {bad}; a run id is a plain directory name under --out "
                         "(e.g. --run-id smollm2-gsm8k), choose where runs go with --out DIR")
    return run_id


def is_run_dir(path: Path) -> bool:
    """A directory the harness made: its marker, or the config.json of an older run."""
    if (path / MARKER).is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "format" in config  # any format: the resume check names it


class RunDir:
    """An open, locked run directory; use as a context manager around the whole run."""

    def __init__(self, path: Path, lock: IO[str]) -> None:
        self.path = path
        self._lock = lock

    def clear(self) -> None:
        """``--fresh``: remove this run's files (never the lock we hold)."""
        if not is_run_dir(self.path):
            raise UsageError(f"--fresh refuses to clear {str(self.path)!r}: it is not a harness run directory "
                             f"(no {MARKER} or run config.json in it); remove it yourself or pick another --run-id")
        for p in self.path.iterdir():
            if p.name in (LOCK, MARKER):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run_dir(out: Path, run_id: str) -> RunDir:
    """Create (or reopen) ``out/run_id`` as a run directory and lock it for this process."""
    path = Path(out) / check_run_id(run_id)
    if path.is_symlink():  # never follow one: --fresh would clear whatever it points at
        raise UsageError(f"run directory {str(path)!r} is a symbolic link, not a directory the harness made; "
                         "pick another --run-id or --out")
    if path.exists() and not path.is_dir():
        raise UsageError(f"run directory {str(path)!r} exists and is not a directory; pick another --run-id or --out")
    if path.is_dir() and any(p.name != LOCK for p in path.iterdir()) and not is_run_dir(path):
        raise UsageError(f"{str(path)!r} already exists and is not a harness run directory; "
                         "pick another --run-id or --out (nothing was written to it)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path / LOCK, "a+", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {str(out)!r} is not writable ({exc.strerror}); choose another directory") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise UsageError(f"run directory {str(path)!r} is in use by {holder}; wait for it to finish, "
                         "or pass another --run-id") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"harness pid {os.getpid()}\n")
    lock.flush()
    (path / MARKER).touch()
    return RunDir(path, lock)
