"""Data-composition strategies of Dong et al. 2023 (arXiv 2310.05492), as pure functions.

Each strategy maps sources (name -> conversations) to an ordered list of
stages; stage i is trained starting from stage i-1's weights. A stage is a
concrete tuple of examples with a content hash, so two strategies that
define the same data (DMT with k=0 and mixed sequential) give identical
stages and share checkpoints.

| strategy          | stages                                                                  |
|-------------------|-------------------------------------------------------------------------|
| single            | [one source]                                                            |
| multi_task        | [all sources mixed]                                                     |
| sequential        | [s1], [s2], ... in ``order`` (paper: code -> math -> general)           |
| mixed_sequential  | [all specialised mixed], [general]                                      |
| dmt (k)           | [all specialised mixed], [general + round(k * n_s) of each specialised] |
| custom            | user-defined lists of sources, optionally ``name@fraction``             |

``fractions`` (source -> fraction) subsample each source first: the paper's
data-amount scaling. Example::

    stages = build("dmt", sources, k=1 / 256, seed=1234)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.core.errors import UsageError
from harness.train.data import Conversation, subsample

STRATEGIES = ("single", "multi_task", "sequential", "mixed_sequential", "dmt", "custom")
PAPER_ORDER = ("code", "math", "general")

Sources = Mapping[str, Sequence[Conversation]]


@dataclass(frozen=True)
class Stage:
    name: str
    examples: tuple[Conversation, ...]
    sha256: str

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.examples:
            out[c.source] = out.get(c.source, 0) + 1
        return out


def make_stage(name: str, examples: Sequence[Conversation]) -> Stage:
    h = hashlib.sha256()
    for c in examples:
        h.update(c.sha256.encode())
    return Stage(name=name, examples=tuple(examples), sha256=h.hexdigest())


def scale(sources: Sources, fractions: Mapping[str, float] | None, seed: int) -> dict[str, list[Conversation]]:
    """Subsample each source to its fraction (data-amount scaling); missing -> 1."""
    fractions = fractions or {}
    unknown = set(fractions) - set(sources)
    if unknown:
        raise UsageError(f"fractions name unknown sources {sorted(unknown)}; sources: {sorted(sources)}")
    return {n: subsample(c, fraction=fractions.get(n, 1.0), seed=seed) for n, c in sources.items()}


def _need(sources: Sources, names: Sequence[str], strategy: str) -> None:
    missing = [n for n in names if n not in sources]
    if missing:
        raise UsageError(f"strategy {strategy!r} needs sources {missing}, which are not defined; "
                         f"defined: {sorted(sources)}")


def single(sources: Sources, source: str) -> list[Stage]:
    _need(sources, [source], "single")
    return [make_stage(source, sources[source])]


def multi_task(sources: Sources) -> list[Stage]:
    return [make_stage("+".join(sources), [c for s in sources.values() for c in s])]


def sequential(sources: Sources, order: Sequence[str] = PAPER_ORDER) -> list[Stage]:
    _need(sources, order, "sequential")
    return [make_stage(n, sources[n]) for n in order]


def _specialised(sources: Sources, general: str) -> list[str]:
    _need(sources, [general], "mixed_sequential/dmt")
    spec = [n for n in sources if n != general]
    if not spec:
        raise UsageError(f"mixed_sequential/dmt need at least one source besides the general one {general!r}")
    return spec


def mixed_sequential(sources: Sources, general: str = "general") -> list[Stage]:
    spec = _specialised(sources, general)
    return [make_stage("+".join(spec), [c for n in spec for c in sources[n]]),
            make_stage(general, sources[general])]


def dmt(sources: Sources, k: float, general: str = "general", seed: int = 1234) -> list[Stage]:
    """Dual-stage Mixed Fine-Tuning: stage 2 replays round(k * n) of each specialised source.

    With k = 0 the stages are exactly mixed_sequential's.
    """
    if not 0 <= k <= 1:
        raise UsageError(f"DMT k must be in [0, 1], got {k}")
    spec = _specialised(sources, general)
    first = mixed_sequential(sources, general)[0]
    replay = {n: subsample(sources[n], count=round(k * len(sources[n])), seed=seed) for n in spec}
    parts = [general] + [f"{n}@{k:g}" for n in spec if replay[n]]
    second = make_stage("+".join(parts), list(sources[general]) + [c for n in spec for c in replay[n]])
    return [first, second]


def custom(sources: Sources, stages: Sequence[Sequence[str]], seed: int = 1234) -> list[Stage]:
    """User-defined stages: each a list of ``"name"`` or ``"name@fraction"``."""
    if not stages:
        raise UsageError("a custom strategy needs at least one stage, e.g. stages = [[\"math\", \"code\"], [\"general\"]]")
    out = []
    for spec in stages:
        examples: list[Conversation] = []
        for item in spec:
            name, _, frac = item.partition("@")
            _need(sources, [name], "custom")
            try:
                fraction = float(frac) if frac else 1.0
            except ValueError:
                raise UsageError(f"custom stage item {item!r}: expected 'source' or 'source@fraction'") from None
            examples.extend(subsample(sources[name], fraction=fraction, seed=seed))
        out.append(make_stage("+".join(spec), examples))
    return out


def build(strategy: str, sources: Sources, *, k: float = 0.0, fractions: Mapping[str, float] | None = None,
          seed: int = 1234, source: str | None = None, order: Sequence[str] = PAPER_ORDER,
          general: str = "general", stages: Sequence[Sequence[str]] = ()) -> list[Stage]:
    """Dispatch by name after scaling each source to its fraction."""
    scaled = scale(sources, fractions, seed)
    if strategy == "single":
        if source is None:
            raise UsageError("strategy 'single' needs a source name")
        return single(scaled, source)
    if strategy == "multi_task":
        return multi_task(scaled)
    if strategy == "sequential":
        return sequential(scaled, order)
    if strategy == "mixed_sequential":
        return mixed_sequential(scaled, general)
    if strategy == "dmt":
        return dmt(scaled, k, general, seed)
    if strategy == "custom":
        return custom(scaled, stages, seed)
    raise UsageError(f"unknown strategy {strategy!r}; choose from: {', '.join(STRATEGIES)}")
