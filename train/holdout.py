"""Held-out probes: examples of each training source that are never trained on, scored at every stage.

Practitioners watch held-out loss per data source during SFT; a study turns it
into a per-ability, per-stage, paired comparison. Each source of a study that
evaluates the ``"holdout"`` suite sets aside ``holdout`` examples (200 by
default; ``holdout = 0`` gives a source no probe) before its ``count`` or
``fraction`` is drawn:

* chosen by a stable hash of the example's content (its roles and texts, not
  its id, position or the study seed), so the same file always holds out the
  same examples, whatever the count, fraction, strategy or seed;
* every copy of a held-out text leaves the training pool, so a duplicate in
  the file cannot leak a held-out example into training;
* written into the study folder (``<out>/holdout/<source>.jsonl``, messages
  format) and scored as the task ``holdout_<source>``: the log-likelihood of
  the last assistant turn given the turns before it, rendered with the
  checkpoint's chat template as training renders it (``harness.tasks.probes``:
  nll per token, bits per byte, greedy match, each item kept for paired tests).

Example, in a study file::

    [sources.math]
    path = "gsm8k_train.jsonl"
    format = "gsm8k"
    holdout = 200

    [eval]
    suites = ["holdout"]   # -> holdout_math, holdout_code, holdout_general
    every_stage = true     # the forgetting curve: harness.readout.forgetting
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.conversations import Conversation, convert, read_records
from harness.core.errors import UsageError
from harness.core.options import Options, option
from harness.tasks.probes import Probe, last_turn

SUITE = "holdout"  # the study's [eval] suites name that expands to every source's held-out probe
DEFAULT = 200
PREFIX = "holdout_"


def content_hash(conv: Conversation) -> str:
    """The hash that picks held-out examples: roles and texts only (not the id, file position or source name)."""
    blob = json.dumps([[m.role, m.content] for m in conv.messages], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def split_holdout(convs: Sequence[Conversation], n: int) -> tuple[list[Conversation], list[Conversation]]:
    """(training pool, held out): the ``n`` distinct texts with the smallest content hash are held out.

    The training pool keeps the file's order and loses every copy of a held-out text.
    """
    if n <= 0:
        return list(convs), []
    first: dict[str, Conversation] = {}
    for c in convs:
        first.setdefault(content_hash(c), c)
    chosen = set(sorted(first)[:n])
    held = [c for h, c in first.items() if h in chosen]
    return [c for c in convs if content_hash(c) not in chosen], held


def task_name(source: str) -> str:
    """``holdout_<source>``; a source name that cannot be a task name is refused."""
    name = PREFIX + source.replace("-", "_").replace(".", "_")
    if not name.isidentifier():
        raise UsageError(f"[sources.{source}]: its held-out probe would be the task {name!r}, which is not a "
                         "task name; name the source with letters, digits, '_' or '-'")
    return name


@dataclass(frozen=True)
class HoldoutOptions(Options):
    """Set by the study (its held-out file and that file's hash), not by hand."""

    data: str | None = option(None, "held-out conversation file (messages jsonl) the study wrote")
    data_sha256: str | None = option(None, "sha256 of that file: a changed hold-out is a different task")
    source: str | None = option(None, "the study source it was held out of (its items' id prefix)")


class HoldoutProbe(Probe):
    """A study source's held-out examples: log-likelihood of the last assistant turn given the turns before it."""

    name = "holdout"
    version = "1"
    Options = HoldoutOptions
    in_suite_all = False  # only a study has held-out files
    source = ""

    def rows(self) -> list[dict[str, Any]]:
        path, want = self.options.data, self.options.data_sha256
        if not path:
            raise UsageError(f"{self.name} scores a study's held-out examples; run it through `harness study` "
                             f"(the study writes {self.source}'s held-out file and passes it)")
        got = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None
        if want and got != want:
            raise UsageError(f"{self.name}: the held-out file {path!r} is {'missing' if got is None else 'changed'} "
                             "since the study wrote it; rerun `harness study` to write it again")
        convs, _ = convert(read_records(path), "messages", self.options.source or self.source)
        return [row for row in (last_turn(c.messages, c.id) for c in convs) if row is not None]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data": self.options.data, "source": self.options.source or self.source}


_CLASSES: dict[str, type[HoldoutProbe]] = {}


def probe_class(source: str) -> type[HoldoutProbe]:
    """The task class of one source's held-out probe, registered once per process under ``holdout_<source>``."""
    from harness.tasks import register

    name = task_name(source)
    if name not in _CLASSES:
        # options of its own, so its flags (--holdout-math-data) never collide with another source's
        opts = dataclass(frozen=True)(type(f"{name}_options", (HoldoutOptions,), {"prefix": name.replace("_", "-")}))
        _CLASSES[name] = type(f"Holdout_{name[len(PREFIX):]}", (HoldoutProbe,),
                              {"name": name, "source": source, "Options": opts,
                               "__doc__": f"held-out examples of the study source {source!r} (log-likelihood)"})
    register(name, _CLASSES[name])
    return _CLASSES[name]


def class_for_task(name: str) -> type[HoldoutProbe]:
    """The class of the task ``name`` (``holdout_<source>``), for a process that did not parse the study.
    Its items' source label comes from the recorded ``source`` option; runs recorded before that option
    existed fall back to the rest of the name."""
    if name in _CLASSES:
        return _CLASSES[name]
    return probe_class(name[len(PREFIX):])
