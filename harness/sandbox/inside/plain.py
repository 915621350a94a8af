"""Plain data across the process boundary between a program and the check that tests it.

HumanEval's arguments and expected values are plain data: None, booleans, numbers, strings, bytes and
lists, tuples, sets and dicts of them. The candidate's results cross from the program's process to the
checker's as JSON with tagged containers, so the check only ever compares values it built itself: an
object whose ``__eq__`` always returns True, or an ``int`` subclass that claims equality, cannot cross
(``encode`` accepts exact types only; ``decode`` builds fresh built-in objects from untrusted JSON).

Encoding: None/bool/int/str are JSON natives, floats are JSON numbers (NaN and infinities as
``NaN``/``Infinity``), lists are JSON arrays, and everything else is a one-key object:
``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict, ``{"s": [...]}`` set, ``{"fs": [...]}``
frozenset, ``{"b": "hex"}`` bytes, ``{"c": [re, im]}`` complex.
"""

import os

MAX_DEPTH = 200


class NotPlain(TypeError):
    """A value that is not plain data (its type's name is the message)."""


def encode(obj, depth=0):
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if obj is None or t is bool or t is int or t is float or t is str:
        return obj
    if t is list:
        return [encode(x, depth + 1) for x in obj]
    if t is tuple:
        return {"t": [encode(x, depth + 1) for x in obj]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in obj.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(x, depth + 1) for x in obj]}
    if t is bytes:
        return {"b": obj.hex()}
    if t is complex:
        return {"c": [obj.real, obj.imag]}
    raise NotPlain(t.__name__)


def decode(data, depth=0):
    """Inverse of ``encode`` for data from an untrusted sender: raises ValueError on anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    t = type(data)
    if data is None or t is bool or t is int or t is float or t is str:
        return data
    if t is list:
        return [decode(x, depth + 1) for x in data]
    if t is not dict or len(data) != 1:
        raise ValueError(f"not an encoded value: {t.__name__}")
    tag, body = next(iter(data.items()))
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError(f"malformed {tag!r}")
    items = [decode(x, depth + 1) for x in body]
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "fs":
        return frozenset(items)
    if tag == "c" and len(items) == 2 and all(type(x) in (int, float) for x in items):
        return complex(items[0], items[1])
    if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in items):
        return {k: v for k, v in items}
    raise ValueError(f"unknown tag {tag!r}")


def send_frame(fd, data, _len=len, _write=os.write, _view=memoryview):
    """One length-prefixed frame (12 ASCII digits, then the bytes)."""
    view = _view(b"%012d" % _len(data) + data)
    while view:
        view = view[_write(fd, view):]


def recv_frame(fd, cap):
    """The next frame's bytes; None at end of file; ValueError for a malformed or oversized frame."""
    head = _read_exact(fd, 12)
    if head is None:
        return None
    if not head.isdigit() or int(head) > cap:
        raise ValueError("malformed frame header")
    return _read_exact(fd, int(head)) or b""


def _read_exact(fd, n, _len=len, _read=os.read):  # bound now: the program's process may patch builtins
    buf = bytearray()
    while _len(buf) < n:
        chunk = _read(fd, n - _len(buf))
        if not chunk:
            if buf:
                raise ValueError("truncated frame")
            return None
        buf += chunk
    return bytes(buf)
