"""Typed fields for the study file: one place that says what each key must hold.

TOML has types, and a study that writes ``allow_code_execution = "false"``
or ``filter_keywords = "code"`` must not be read by truthiness or character
by character. Each table of the study is a mapping key -> :class:`Kind`; one
call checks the table's keys and every value's type and range, and a wrong
one fails with one line naming the table, the key, what was expected and
what was given::

    [train] epochs: expected a number > 0, got 'three' (a string)

Booleans are never numbers here (``k = true`` is refused), numbers must be
finite, lists are lists (a bare string is refused, not split), tables are
tables. Example::

    t = check_table(data.get("train", {}), TRAIN, "[train]")
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from harness.core.errors import UsageError


@dataclass(frozen=True)
class Kind:
    """What a key holds: a description for messages and a predicate on the parsed TOML value."""

    name: str  # "a boolean (true or false)"
    ok: Callable[[Any], bool]


def toml_type(value: Any) -> str:
    """The TOML name of a parsed value's type, for messages."""
    names = [(bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
             (dict, "a table")]
    return next((n for t, n in names if isinstance(value, t)), type(value).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


BOOL = Kind("a boolean (true or false)", lambda v: isinstance(v, bool))
STR = Kind("a string", lambda v: isinstance(v, str))
TABLE = Kind("a table", lambda v: isinstance(v, dict))
INT = Kind("an integer", _is_int)
PLAIN_NAME = Kind("a plain name (letters, digits, '.', '_', '-'; it names a folder)",
                  lambda v: isinstance(v, str) and re.fullmatch(r"[\w-][\w.-]*", v) is not None)
NUMBER = Kind("a finite number", _is_number)


def int_at_least(low: int) -> Kind:
    return Kind(f"an integer >= {low}", lambda v: _is_int(v) and v >= low)


def number_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Kind:
    """A finite number in a range; the name reads like the range (``a number > 0``, ``a number in [0, 1)``)."""
    if high == math.inf:
        name = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        name = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(v: Any) -> bool:
        return _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Kind(name, ok)


def one_of(*choices: str) -> Kind:
    return Kind(f"one of {', '.join(map(repr, choices))}", lambda v: isinstance(v, str) and v in choices)


def either(a: Kind, b: Kind) -> Kind:
    return Kind(f"{a.name} or {b.name}", lambda v: a.ok(v) or b.ok(v))


def list_of(item: Kind, nonempty: bool = False) -> Kind:
    plural = item.name.removeprefix("a ").removeprefix("an ")
    return Kind(f"{'a non-empty' if nonempty else 'a'} list of {plural}s" if " " not in plural
                else f"{'a non-empty' if nonempty else 'a'} list, each {item.name}",
                lambda v: isinstance(v, list) and (bool(v) or not nonempty) and all(item.ok(x) for x in v))


def ratio(value: Any) -> float | None:
    """A number or a fraction string like ``"1/256"`` as a finite float; None when it is neither."""
    if isinstance(value, bool):
        return None
    try:
        x = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None
    return x if math.isfinite(x) else None


RATIO = Kind('a number or a fraction string like "1/4"', lambda v: ratio(v) is not None)


def fail(where: str, key: str, kind: Kind | str, value: Any, hint: str = "") -> UsageError:
    """The one-line error: table, key, expected, given."""
    expected = kind.name if isinstance(kind, Kind) else kind
    return UsageError(f"{where} {key}: expected {expected}, got {value!r} ({toml_type(value)}){hint}")


def check_table(table: Any, spec: Mapping[str, Kind], where: str,
                hints: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``table`` after checking it is a table, has only ``spec``'s keys and each value is of its kind."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table, got {table!r} ({toml_type(table)})")
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(spec))}")
    for key, value in table.items():
        if not spec[key].ok(value):
            raise fail(where, key, spec[key], value, (hints or {}).get(key, ""))
    return table


def no_duplicates(values: list[Any], where: str, key: str, shown: list[Any] | None = None) -> None:
    """Refuse a value given twice (after normalising: ``"1/4"`` and ``0.25`` are the same k)."""
    seen: dict[Any, Any] = {}
    for v, s in zip(values, shown or values, strict=True):
        if v in seen:
            raise UsageError(f"{where} {key}: {s!r} is given twice (as {seen[v]!r} and {s!r}); list each value once")
        seen[v] = s
