"""Typed options declared once, as dataclass fields, and read from the CLI or a study TOML.

A task declares its options as a frozen dataclass whose fields carry the flag
name, the help text and the allowed range (after TRL's HfArgumentParser and
Inspect's ``-T key=value`` task arguments)::

    @dataclass(frozen=True)
    class GSM8KOptions(Options):
        num_fewshot: int = option(0, "exemplars from train as chat turns", low=0, high=64)

From that one declaration come the ``harness run`` argument group
(:func:`add_arguments`), the study's ``[eval.gsm8k]`` table
(:func:`from_table`) and validation: types, finiteness, ranges and choices
(``Literal``), each failure a one-line ``UsageError`` naming the flag or the
TOML key. Cross-field rules go in ``Options.check``.

Flags default to ``--<task>-<field>``; a field may name its own (``--n``).
"""

from __future__ import annotations

import argparse
import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from harness.core.errors import UsageError

Namer = Callable[[str], str]  # field name -> how the user wrote it ("--exec-timeout", "[eval.humaneval] exec_timeout")
# How errors name fields while :func:`build` constructs options (flags when unset).
_NAMER: ContextVar[Namer | None] = ContextVar("option_namer", default=None)


def option(default: Any, help: str, *, flag: str | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, env: str | None = None,
           identity: bool = True) -> Any:
    """A dataclass field with what the CLI, the study TOML and validation need.

    ``low``/``high`` bound numbers (``low_open``: strictly above ``low``); ``env``
    names an environment variable that turns a boolean on; ``identity=False``
    marks a field that changes how the work runs, not what it computes (left out
    of the run id, e.g. the number of sandbox workers).
    """
    return field(default=default, metadata={"help": help, "flag": flag, "low": low, "high": high,
                                            "low_open": low_open, "env": env, "identity": identity})


@dataclass(frozen=True)
class Spec:
    """One option, resolved: its Python type without ``None``, and whether ``None`` is allowed."""

    name: str
    flag: str
    kind: type | tuple[str, ...]  # int, float, str, bool, or the choices of a Literal
    optional: bool
    default: Any
    help: str
    low: float | None
    high: float | None
    low_open: bool
    env: str | None
    identity: bool

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Options:
    """Base of every options dataclass: validated on construction."""

    prefix = ""  # flag prefix for fields without their own flag, e.g. "gsm8k"

    def __post_init__(self) -> None:
        validate(self, _NAMER.get() or (lambda name: spec_of(type(self), name).flag))

    def check(self, name: Namer) -> None:
        """Cross-field rules; raise UsageError naming fields with ``name(field)``."""


def specs(cls: type[Options]) -> list[Spec]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
        meta = f.metadata
        flag = meta.get("flag") or f"--{cls.prefix + '-' if cls.prefix else ''}{f.name}".replace("_", "-")
        default = f.default if f.default is not MISSING else None
        out.append(Spec(f.name, flag, kind, optional, default, meta.get("help", ""), meta.get("low"),
                        meta.get("high"), meta.get("low_open", False), meta.get("env"), meta.get("identity", True)))
    return out


def spec_of(cls: type[Options], name: str) -> Spec:
    return next(s for s in specs(cls) if s.name == name)


def _kind(hint: Any, where: str) -> tuple[type | tuple[str, ...], bool]:
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            raise TypeError(f"{where}: an option has one type (optionally | None), got {hint}")
        hint, args = rest[0], typing.get_args(rest[0])
    if typing.get_origin(hint) is Literal:
        return tuple(str(a) for a in args), optional
    if hint in (int, float, str, bool):
        return hint, optional
    raise TypeError(f"{where}: option type must be int, float, str, bool or a Literal of strings, got {hint}")


# -- validation ------------------------------------------------------------------------------------

def validate(opts: Options, name: Namer) -> None:
    for s in specs(type(opts)):
        check_value(s, getattr(opts, s.name), name(s.name))
    opts.check(name)


def check_value(s: Spec, value: Any, shown: str) -> None:
    """Type, finiteness, range and choices of one value; ``shown`` is how the user named it."""
    if value is None:
        if not s.optional:
            raise UsageError(f"{shown} needs a value ({_expected(s)})")
        return
    if isinstance(s.kind, tuple):
        if value not in s.kind:
            raise UsageError(f"{shown} {value!r}: choose from {', '.join(s.kind)}")
        return
    ok = isinstance(value, s.kind) and not (s.kind is not bool and isinstance(value, bool))
    if s.kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise UsageError(f"{shown} must be {_expected(s)}, got {value!r} ({type(value).__name__})")
    if s.kind in (int, float):
        if not math.isfinite(value):
            raise UsageError(f"{shown} must be a finite number ({_expected(s)}), got {value}")
        too_low = s.low is not None and (value < s.low or (s.low_open and value == s.low))
        too_high = s.high is not None and value > s.high
        if too_low or too_high:
            raise UsageError(f"{shown} must be {_range(s)}, got {value}")


def _expected(s: Spec) -> str:
    if isinstance(s.kind, tuple):
        return f"one of {', '.join(s.kind)}"
    noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[s.kind]
    bounds = _range(s)
    return f"{noun} {bounds}" if bounds else noun


def _range(s: Spec) -> str:
    low = None if s.low is None else (f"> {_num(s.low)}" if s.low_open else f">= {_num(s.low)}")
    high = None if s.high is None else f"<= {_num(s.high)}"
    return " and ".join(p for p in (low, high) if p)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# -- the command line ------------------------------------------------------------------------------

def add_arguments(group: argparse._ArgumentGroup, cls: type[Options]) -> None:
    """One argument per field; values stay text (or None when not given) until :func:`from_namespace`."""
    for s in specs(cls):
        extra = f" (env {s.env}=1)" if s.env else ""
        if s.kind is bool:
            group.add_argument(s.flag, dest=s.dest, action="store_true", default=None, help=s.help + extra)
            continue
        # No argparse type/choices: values are checked by check_value, so every mistake is one line.
        shown = "" if s.default is None else f" (default {s.default})"
        group.add_argument(s.flag, dest=s.dest, default=None, metavar=_metavar(s), help=s.help + shown + extra)


def _metavar(s: Spec) -> str | None:
    if isinstance(s.kind, tuple):
        return "{" + ",".join(s.kind) + "}"
    return {int: "N", float: "X", str: "TEXT"}.get(s.kind)  # type: ignore[call-overload]


def from_namespace(cls: type[Options], args: argparse.Namespace) -> Options:
    """Options from parsed flags: text converted and checked, each error naming its flag."""
    values: dict[str, Any] = {}
    for s in specs(cls):
        raw = getattr(args, s.dest, None)
        if raw is None:
            raw = True if _env_on(s) else None
            if raw is None:
                continue
        values[s.name] = raw if s.kind is bool else _parse_text(s, raw)
    return build(cls, values, lambda name: spec_of(cls, name).flag)


def _parse_text(s: Spec, text: str) -> Any:
    if isinstance(s.kind, tuple) or s.kind is str:
        return text
    try:
        return s.kind(text)
    except ValueError:
        raise UsageError(f"{s.flag} {text!r} is not {_expected(s)}") from None


def _env_on(s: Spec) -> bool:
    return bool(s.env) and os.environ.get(s.env or "", "").lower() in ("1", "true", "yes")


# -- study TOML tables -----------------------------------------------------------------------------

def from_table(cls: type[Options], table: Mapping[str, Any], where: str) -> Options:
    """Options from a TOML table (``where`` = "[eval.gsm8k]"): unknown keys and wrong types refused."""
    if not isinstance(table, Mapping):
        raise UsageError(f"{where} must be a table, got {type(table).__name__}")
    known = {s.name: s for s in specs(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known)) or 'none'}")
    values = dict(table)
    for name, s in known.items():
        if name not in values and _env_on(s):
            values[name] = True
    return build(cls, values, lambda name: f"{where} {name}")


def build(cls: type[Options], values: Mapping[str, Any], name: Namer) -> Options:
    """Construct, with every error naming fields the way the caller's user wrote them."""
    token = _NAMER.set(name)
    try:
        return cls(**values)
    finally:
        _NAMER.reset(token)


def identity(opts: Options) -> dict[str, Any]:
    """The fields that determine what a run computes (for its id)."""
    return {s.name: getattr(opts, s.name) for s in specs(type(opts)) if s.identity}


def as_dict(opts: Options) -> dict[str, Any]:
    return {s.name: getattr(opts, s.name) for s in specs(type(opts))}


def iter_flags(classes: Mapping[str, type[Options]]) -> Iterator[tuple[str, str]]:
    """(flag, owner) for every field of every class, to find two owners of one flag."""
    for owner, cls in classes.items():
        for s in specs(cls):
            yield s.flag, owner


@dataclass(frozen=True)
class SharedOptions(Options):
    """Run-level options every task reads: where users of lm-eval and Inspect expect them, once per run."""

    limit: int | None = option(None, "first N items of each task", low=1)
    seed: int = option(1234, "seed for sampling and few-shot picks, sent with every request", low=0,
                       high=2**32 - 1)  # what every engine accepts (numpy and vLLM refuse negative seeds)
    max_tokens: int | None = option(None, "max new tokens for every task (default: each task's own)", low=1)
    allow_code_execution: bool = option(False, "run model-written code in the sandbox (needed by tasks that "
                                        "execute code, e.g. humaneval)", env="HARNESS_ALLOW_CODE_EXECUTION")
