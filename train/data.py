"""Training sources: read a source's file into conversations, filter, subsample.

The file formats and their readers (``gsm8k``, ``alpaca``, ``sharegpt``,
``messages``; local files or hub dataset ids) are ``harness.core.conversations``,
shared with the probe tasks; this module adds what a study does to a source:
the no-code/no-math filter (``harness.train.classify``), seeded subsampling by
``count`` or ``fraction``, and the one rounding rule every proportion of a
source follows (:func:`proportion`). Example::

    convs, stats = load_source(SourceSpec("general", "sharegpt.json.gz", "sharegpt",
                                          filter_keywords=("code", "math")))
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from harness.core.conversations import (  # noqa: F401 (re-exported: the formats are part of a source's API)
    CONVERTERS,
    FORMAT_KEYS,
    FORMATS,
    SUFFIXES,
    Conversation,
    convert,
    from_alpaca,
    from_gsm8k,
    from_messages,
    from_sharegpt,
    is_hub,
    read_hub,
    read_records,
)
from harness.core.errors import UsageError
from harness.train.classify import filter_conversations


@dataclass(frozen=True)
class SourceSpec:
    """Where one source comes from and how it is cut down."""

    name: str
    path: str  # local file or hub dataset id
    format: str
    split: str = "train"  # hub datasets only
    fraction: float | None = None
    count: int | None = None
    filter_keywords: tuple[str, ...] = ()
    seed: int = 1234
    # "classifier" (harness.train.classify: code or maths content), "keywords" or "none";
    # None keeps the old meaning: the keyword rule when filter_keywords is given
    filter: str | None = None
    # examples set aside (by content hash, before count/fraction) as the source's held-out probe
    holdout: int = 0
    # drop conversations longer than this many characters (all turns): short enough to train and score on a CPU
    max_chars: int | None = None

    @property
    def filter_rule(self) -> str:
        return self.filter or ("keywords" if self.filter_keywords else "none")


@dataclass(frozen=True)
class SourceStats:
    name: str
    records: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    filtered: int = 0
    kept: int = 0
    filter: str = "none"
    filter_labels: dict[str, int] = field(default_factory=dict)  # label or keyword -> removed count
    held_out: int = 0  # set aside for the held-out probe, never trained on


# -- subsampling and filtering ------------------------------------------------------------------


def proportion(n: int, x: float) -> int:
    """How many of ``n`` examples a proportion ``x`` in [0, 1] keeps: the one rounding rule of training.

    ``x * n`` rounded half up (not ``round()``'s half to even: 2.5 -> 3, 0.5 -> 1), and at least
    one example when ``x > 0`` and ``n > 0``, so a nonzero DMT k or data fraction never silently
    keeps nothing (DMT k = 1/256 of 20 examples replays 1, not 0; the plan notes it). ``x`` is
    read as the decimal it was written as (0.29 x 50 = 14.5 -> 15), not its binary float.
    """
    if x <= 0 or n <= 0:
        return 0
    exact = Fraction(x).limit_denominator(10**9) * n
    return max(1, math.floor(exact + Fraction(1, 2)))


def proportion_note(what: str, n: int, x: float, verb: str = "keeping") -> str | None:
    """A plan note when :func:`proportion`'s minimum of one overrides rounding to 0, else None."""
    if x > 0 and n > 0 and x * n < 0.5:
        return (f"{what}: {n} x {x:g} = {x * n:.3g} examples rounds to 0; {verb} 1 (the minimum for a "
                f"nonzero proportion, so the effective proportion is {1 / n:.3g})")
    return None


def subsample(convs: Sequence[Conversation], *, fraction: float | None = None, count: int | None = None,
              seed: int = 1234) -> list[Conversation]:
    """A seeded random subset of ``proportion(n, fraction)`` or ``count`` items, in their original order.

    The same (data, size, seed) always gives the same subset, so stage hashes are stable.
    """
    n = len(convs)
    if fraction is not None and count is not None:
        raise UsageError("give a fraction or a count to subsample, not both")
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise UsageError(f"fraction must be in [0, 1], got {fraction}")
        count = proportion(n, fraction)
    if count is None:
        return list(convs)
    if count < 0:
        raise UsageError(f"subsample count must be >= 0, got {count}")
    if count >= n:
        return list(convs)
    keep = sorted(random.Random(seed).sample(range(n), count))
    return [convs[i] for i in keep]


def keyword_filter(convs: Sequence[Conversation], keywords: Sequence[str]) -> tuple[list[Conversation], int]:
    """Drop conversations in which any turn mentions a keyword; return (kept, removed).

    The paper removed ShareGPT conversations whose InsTag tags contain "code"
    or "math". We match the keywords in the text itself, case-insensitively,
    as word prefixes: "math" catches "mathematics", "code" catches "codes"
    but not "barcode".
    """
    if not keywords:
        return list(convs), 0
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + ")", re.IGNORECASE)
    kept = [c for c in convs if not any(pattern.search(m.content) for m in c.messages)]
    return kept, len(convs) - len(kept)


def load_source(spec: SourceSpec, base_dir: Path | None = None) -> tuple[list[Conversation], SourceStats]:
    """Read, convert, cut to max_chars, filter, hold out, then subsample one source (held-out examples dropped)."""
    convs, _held, stats = load_source_split(spec, base_dir)
    return convs, stats


def load_source_split(spec: SourceSpec, base_dir: Path | None = None) -> tuple[list[Conversation],
                                                                               list[Conversation], SourceStats]:
    """(training examples, held-out examples, stats): ``spec.holdout`` examples are set aside by content hash
    (harness.train.holdout) before the count or fraction is drawn from the rest."""
    from harness.train.holdout import split_holdout

    path = spec.path
    if base_dir is not None and not Path(path).is_absolute() and (base_dir / path).exists():
        path = str(base_dir / path)
    records = read_hub(path, spec.split) if is_hub(path) else read_records(path)
    convs, dropped = convert(records, spec.format, spec.name)
    if spec.max_chars is not None:
        short = [c for c in convs if sum(len(m.content) for m in c.messages) <= spec.max_chars]
        if len(short) < len(convs):
            dropped[f"longer than max_chars {spec.max_chars}"] = len(convs) - len(short)
        convs = short
    convs, removed = filter_conversations(convs, spec.filter_rule, spec.filter_keywords)
    labels = Counter(label for r in removed for label in r.labels)
    convs, held = split_holdout(convs, spec.holdout)
    convs = subsample(convs, fraction=spec.fraction, count=spec.count, seed=spec.seed)
    return convs, held, SourceStats(spec.name, len(records), dict(dropped), len(removed), len(convs),
                                    spec.filter_rule, dict(labels), len(held))
