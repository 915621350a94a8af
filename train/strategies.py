"""Data-composition strategies of Dong et al. 2023 (arXiv 2310.05492): pure functions, one registry.

Each strategy maps sources (name -> conversations) to an ordered list of
stages; stage i is trained starting from stage i-1's weights. A stage is a
concrete tuple of examples with a content hash, so two strategies that
define the same data (DMT with k=0 and mixed sequential) give identical
stages and share checkpoints.

| strategy          | parameters       | stages                                                        |
|-------------------|------------------|---------------------------------------------------------------|
| single            | source (swept)   | [one source]                                                  |
| multi_task        |                  | [all sources mixed]                                           |
| sequential        | order            | [s1], [s2], ... in ``order`` (paper: code -> math -> general) |
| mixed_sequential  | general          | [all specialised mixed], [general]                            |
| dmt               | k (swept), general | [all specialised mixed], [general + proportion(n_s, k) of each specialised s] |
| custom            | stages (swept)   | user-defined lists of sources, optionally ``name@fraction``   |

A strategy is registered with the parameters it takes; each parameter names
the ``[grid]`` key it is read from, and at most one is *swept* (the grid key
holds a list or table of values, one grid point each). :func:`variants`
expands a grid into points and :func:`build` produces the stages, so adding a
strategy is one decorated function. ``fractions`` (source -> fraction)
subsample each source first: the paper's data-amount scaling. Counts follow
one rounding rule, :func:`harness.train.data.proportion`. Example::

    stages = build("dmt", sources, k=1 / 256, seed=1234)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.errors import UsageError
from harness.train.data import Conversation, proportion, proportion_note, subsample
from harness.train.schema import ratio

PAPER_ORDER = ("code", "math", "general")

Sources = Mapping[str, Sequence[Conversation]]


@dataclass(frozen=True)
class Stage:
    name: str
    examples: tuple[Conversation, ...]
    sha256: str
    notes: tuple[str, ...] = field(default=(), compare=False)  # plan warnings; not part of the data

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.examples:
            out[c.source] = out.get(c.source, 0) + 1
        return out


def make_stage(name: str, examples: Sequence[Conversation], notes: Sequence[str] = ()) -> Stage:
    h = hashlib.sha256()
    for c in examples:
        h.update(c.sha256.encode())
    return Stage(name=name, examples=tuple(examples), sha256=h.hexdigest(), notes=tuple(notes))


# -- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A strategy parameter: the keyword of its stage function and the ``[grid]`` key it comes from.

    A swept parameter's grid key holds one value per grid point (a list, or a table of named
    values); ``meta`` is the run-metadata field its value is recorded under, and ``axis`` says
    whether readers plot it along x (a number, like k) or as a series (a name, like a source).
    """

    name: str
    grid_key: str
    sweep: bool = False
    label: str = ""  # label prefix of a swept value: "dmt-k0.25"
    meta: str | None = None
    axis: str | None = None  # "x" | "series" | None
    names_sources: bool = False  # its value names sources ("math", ["code", "math"], "code@0.5"): checked at parse


@dataclass(frozen=True)
class Strategy:
    name: str
    params: tuple[Param, ...]
    stages: Callable[..., list[Stage]]
    seeded: bool = False  # the stage function takes the study seed
    doc: str = ""


@dataclass(frozen=True)
class Variant:
    """One grid point of a strategy before its data is built."""

    label: str
    strategy: str
    params: dict[str, Any]
    meta: dict[str, Any]  # metadata fields this point fixes, e.g. {"k": 0.25}
    axes: dict[str, tuple[str, ...]]  # {"x": (...), "series": (...)}: which metadata fields are axes


REGISTRY: dict[str, Strategy] = {}


def strategy(name: str, *params: Param, seeded: bool = False) -> Callable[[Callable[..., list[Stage]]], Any]:
    """Register ``fn(sources, **params) -> stages`` under ``name``."""
    if sum(p.sweep for p in params) > 1:
        raise ValueError(f"strategy {name!r}: at most one swept parameter")

    def register(fn: Callable[..., list[Stage]]) -> Callable[..., list[Stage]]:
        REGISTRY[name] = Strategy(name, params, fn, seeded, next(iter((fn.__doc__ or "").strip().splitlines()), ""))
        return fn

    return register


def get(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown strategy {name!r}; choose from: {', '.join(REGISTRY)}") from None


def variants(name: str, grid: Mapping[str, Any]) -> list[Variant]:
    """The grid points of one strategy: one per value of its swept parameter, else one."""
    s = get(name)
    fixed = {p.name: grid[p.grid_key] for p in s.params if not p.sweep and p.grid_key in grid}
    sweep = next((p for p in s.params if p.sweep), None)
    axes = {"x": tuple(p.meta for p in s.params if p.axis == "x" and p.meta),
            "series": ("strategy", *(p.meta for p in s.params if p.axis == "series" and p.meta))}
    if sweep is None:
        return [Variant(name, name, fixed, {}, axes)]
    values = grid.get(sweep.grid_key, ())
    if isinstance(values, Mapping):  # named values (custom stage lists): the name is what a reader sees
        named = [(tag, v, tag) for tag, v in values.items()]
    else:
        named = [(f"{v:g}" if isinstance(v, float) else str(v), v, v) for v in values]
    return [Variant(f"{name}-{sweep.label}{tag}", name, {**fixed, sweep.name: v},
                    {sweep.meta: shown} if sweep.meta else {}, axes) for tag, v, shown in named]


def named_sources(name: str, grid: Mapping[str, Any]) -> set[str]:
    """The sources a strategy's grid values name, so a study naming an undefined one fails at parse time."""
    def flat(v: Any) -> list[str]:
        if isinstance(v, str):
            return [v.partition("@")[0]]
        items = v.values() if isinstance(v, Mapping) else v if isinstance(v, list | tuple) else ()
        return [n for x in items for n in flat(x)]

    return {n for p in get(name).params if p.names_sources and p.grid_key in grid for n in flat(grid[p.grid_key])}


def build(name: str, sources: Sources, *, fractions: Mapping[str, float] | None = None, seed: int = 1234,
          **params: Any) -> list[Stage]:
    """Scale each source to its fraction, then produce the named strategy's stages."""
    s = get(name)
    declared = {p.name for p in s.params}
    unknown = sorted(set(params) - declared)
    if unknown:
        raise UsageError(f"strategy {name!r} takes {', '.join(sorted(declared)) or 'no parameters'}; "
                         f"got {', '.join(unknown)}")
    scaled, notes = scale(sources, fractions, seed)
    stages = s.stages(scaled, **params, **({"seed": seed} if s.seeded else {}))
    if notes and stages:
        stages[0] = replace(stages[0], notes=tuple(notes) + stages[0].notes)
    return stages


def scale(sources: Sources, fractions: Mapping[str, float] | None,
          seed: int) -> tuple[dict[str, list[Conversation]], list[str]]:
    """Subsample each source to its fraction (data-amount scaling; missing -> 1), with plan notes."""
    fractions = fractions or {}
    unknown = set(fractions) - set(sources)
    if unknown:
        raise UsageError(f"fractions name unknown sources {sorted(unknown)}; sources: {sorted(sources)}")
    notes = [n for name, c in sources.items()
             if (n := proportion_note(f"fraction {fractions.get(name, 1.0):g} of {name}", len(c),
                                      fractions.get(name, 1.0)))]
    scaled = {n: subsample(c, fraction=fractions.get(n, 1.0), seed=seed) for n, c in sources.items()}
    return scaled, notes


# -- the strategies -----------------------------------------------------------------------------


def _need(sources: Sources, names: Sequence[str], strategy: str) -> None:
    missing = [n for n in names if n not in sources]
    if missing:
        raise UsageError(f"strategy {strategy!r} needs sources {missing}, which are not defined; "
                         f"defined: {sorted(sources)}")


@strategy("single", Param("source", "single_sources", sweep=True, meta="source", axis="series", names_sources=True))
def single(sources: Sources, source: str | None = None) -> list[Stage]:
    """One source alone."""
    if source is None:
        raise UsageError("strategy 'single' needs a source name")
    _need(sources, [source], "single")
    return [make_stage(source, sources[source])]


@strategy("multi_task")
def multi_task(sources: Sources) -> list[Stage]:
    """All sources mixed in one stage."""
    return [make_stage("+".join(sources), [c for s in sources.values() for c in s])]


@strategy("sequential", Param("order", "order", names_sources=True))
def sequential(sources: Sources, order: Sequence[str] = PAPER_ORDER) -> list[Stage]:
    """One stage per source, in ``order``."""
    _need(sources, order, "sequential")
    return [make_stage(n, sources[n]) for n in order]


def _specialised(sources: Sources, general: str) -> list[str]:
    _need(sources, [general], "mixed_sequential/dmt")
    spec = [n for n in sources if n != general]
    if not spec:
        raise UsageError(f"mixed_sequential/dmt need at least one source besides the general one {general!r}")
    return spec


@strategy("mixed_sequential", Param("general", "general", names_sources=True))
def mixed_sequential(sources: Sources, general: str = "general") -> list[Stage]:
    """The specialised sources mixed, then the general one."""
    spec = _specialised(sources, general)
    return [make_stage("+".join(spec), [c for n in spec for c in sources[n]]),
            make_stage(general, sources[general])]


@strategy("dmt", Param("k", "k", sweep=True, label="k", meta="k", axis="x"),
          Param("general", "general", names_sources=True), seeded=True)
def dmt(sources: Sources, k: float = 0.0, general: str = "general", seed: int = 1234) -> list[Stage]:
    """Dual-stage Mixed Fine-Tuning: stage 2 replays ``proportion(n, k)`` of each specialised source.

    With k = 0 the stages are exactly mixed_sequential's; a nonzero k replays at least one
    example of every non-empty specialised source, and the stage notes when that minimum applied.
    """
    if not 0 <= k <= 1:
        raise UsageError(f"DMT k must be in [0, 1], got {k}")
    spec = _specialised(sources, general)
    first = mixed_sequential(sources, general)[0]
    replay = {n: subsample(sources[n], count=proportion(len(sources[n]), k), seed=seed) for n in spec}
    notes = [n for s in spec if (n := proportion_note(f"dmt k={k:g}: {s}", len(sources[s]), k, "replaying"))]
    parts = [general] + [f"{n}@{k:g}" for n in spec if replay[n]]
    second = make_stage("+".join(parts), list(sources[general]) + [c for n in spec for c in replay[n]], notes)
    return [first, second]


@strategy("custom", Param("stages", "custom", sweep=True, meta="custom", axis="series", names_sources=True),
          seeded=True)
def custom(sources: Sources, stages: Sequence[Sequence[str]] = (), seed: int = 1234) -> list[Stage]:
    """User-defined stages: each a list of ``"name"`` or ``"name@fraction"``."""
    if not stages:
        raise UsageError("a custom strategy needs at least one stage, e.g. stages = [[\"math\", \"code\"], [\"general\"]]")
    out = []
    for spec in stages:
        examples: list[Conversation] = []
        notes: list[str] = []
        for item in spec:
            name, _, frac = item.partition("@")
            _need(sources, [name], "custom")
            fraction = ratio(frac) if frac else 1.0
            if fraction is None:
                raise UsageError(f"custom stage item {item!r}: expected 'source' or 'source@fraction' (0.5 or 1/2)")
            examples.extend(subsample(sources[name], fraction=fraction, seed=seed))
            notes += filter(None, [proportion_note(f"custom {item}", len(sources[name]), fraction)])
        out.append(make_stage("+".join(spec), examples, notes))
    return out

