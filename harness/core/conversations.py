"""Conversation files in four formats, read into one conversation record.

Training sources (``harness.train.data``) and the log-likelihood probes
(``harness.tasks.probes``) read the same files, so the readers live here, in
the lowest layer. A file is a local ``.json``, ``.jsonl``, ``.json.gz``,
``.jsonl.gz`` or ``.parquet`` file, or a hub dataset id, in one of four
formats, after the data of Dong et al. 2023 (arXiv 2310.05492):

* ``gsm8k``    GSM8K / GSM8K-RFT: ``{"question", "answer"}`` (RFT files use ``query``/``response``)
* ``alpaca``   Code Alpaca: ``{"instruction", "input", "output"}``; user turn = instruction + input
* ``sharegpt`` ShareGPT / FastChat: ``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``
* ``messages`` already in chat form: ``{"messages": [{"role", "content"}]}``

A malformed file (bad JSON, a record without the fields its format needs) is
a user's mistake and fails with the file, the line or record and what was
expected. ShareGPT is known to hold empty, truncated and role-broken
conversations: those are dropped and counted by reason, as FastChat's
cleaning does. Example::

    convs, dropped = convert(read_records("sharegpt.json"), "sharegpt", "general")
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.files import read_jsonl_numbered
from harness.core.records import Message

FORMATS = ("gsm8k", "alpaca", "sharegpt", "messages")
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                   "bard": "assistant", "bing": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Conversation:
    """One training example: a chat that ends with an assistant turn."""

    id: str
    source: str
    messages: tuple[Message, ...]

    @property
    def sha256(self) -> str:
        blob = json.dumps([self.source, [[m.role, m.content] for m in self.messages]], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source,
                "messages": [{"role": m.role, "content": m.content} for m in self.messages]}


def write_conversations(convs: Sequence[Conversation], path: Path) -> str:
    """Write ``convs`` as messages records (``{"id", "messages"}``, what the ``messages`` format reads);
    return the file's sha256."""
    from harness.core.files import write_jsonl_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(path, [{"id": c.id, "messages": [{"role": m.role, "content": m.content} for m in c.messages]}
                              for c in convs])
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- reading files ------------------------------------------------------------------------------


def read_records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` from a local file or hub dataset id; ``where`` is ``file:line``."""
    p = Path(path).expanduser()
    if not p.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.endswith(SUFFIXES):
            return read_hub(path)
        raise UsageError(f"data file {path!r} does not exist; pass a {'/'.join(SUFFIXES)} file or a hub dataset id")
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(p)
    if name.endswith((".json", ".json.gz")):
        return _read_json(p)
    if name.endswith(".parquet"):
        return _read_parquet(p)
    raise UsageError(f"data file {path!r}: unknown extension; expected one of {', '.join(SUFFIXES)}")


def _open_text(p: Path):
    return gzip.open(p, "rt", encoding="utf-8") if p.name.endswith(".gz") else open(p, encoding="utf-8")


def _read_jsonl(p: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p}:{lineno}", rec) for lineno, rec in read_jsonl_numbered(p)]


def _read_json(p: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        with _open_text(p) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg}); expected a JSON list of objects") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UsageError(f"{p}: cannot be read ({exc}); expected a UTF-8 JSON list of objects (gzip if .gz)") from None
    if not isinstance(data, list):
        raise UsageError(f"{p}: top level is a JSON {type(data).__name__}; expected a list of objects")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise UsageError(f"{p}: record {i} is a JSON {type(rec).__name__}; expected an object")
    return [(f"{p}:record {i}", rec) for i, rec in enumerate(data)]


def _read_parquet(p: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading .parquet needs pyarrow: pip install 'sft-harness[train]'") from None
    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise UsageError(f"{p}: not a readable parquet file ({exc})") from None
    return [(f"{p}:row {i}", r) for i, r in enumerate(rows)]


def read_hub(dataset_id: str, split: str = "train") -> list[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"hub dataset {dataset_id!r} needs the datasets package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, missing, gated: all a user's matter
        raise UsageError(f"hub dataset {dataset_id!r} (split {split!r}) cannot be loaded: {exc}") from None
    return [(f"{dataset_id}[{split}]:row {i}", dict(r)) for i, r in enumerate(ds)]


# -- converters ---------------------------------------------------------------------------------


def _field(rec: dict[str, Any], where: str, names: Sequence[str], fmt: str) -> str:
    for n in names:
        if isinstance(rec.get(n), str):
            return rec[n]
    raise UsageError(f"{where}: no string field {' or '.join(map(repr, names))}; expected {fmt} records "
                     f"with keys {FORMAT_KEYS[fmt]}")


FORMAT_KEYS = {"gsm8k": "question, answer (or query, response)", "alpaca": "instruction, input (optional), output",
               "sharegpt": "id, conversations: [{from, value}]", "messages": "messages: [{role, content}]"}


def _make(source: str, messages: list[Message], rec_id: Any = None) -> Conversation:
    conv = Conversation(id="", source=source, messages=tuple(messages))
    cid = f"{source}:{rec_id}" if rec_id not in (None, "") else f"{source}:{conv.sha256[:16]}"
    return Conversation(id=cid, source=source, messages=conv.messages)


def from_gsm8k(rec: dict[str, Any], where: str, source: str) -> Conversation:
    q = _field(rec, where, ("question", "query"), "gsm8k")
    a = _field(rec, where, ("answer", "response"), "gsm8k")
    return _make(source, [Message("user", q), Message("assistant", a)])


def from_alpaca(rec: dict[str, Any], where: str, source: str) -> Conversation:
    instruction = _field(rec, where, ("instruction",), "alpaca")
    output = _field(rec, where, ("output", "response"), "alpaca")
    extra = rec.get("input") or ""
    prompt = f"{instruction}\n\n{extra}" if str(extra).strip() else instruction
    return _make(source, [Message("user", prompt), Message("assistant", output)])


def from_sharegpt(rec: dict[str, Any], where: str, source: str) -> Conversation | str:
    """A Conversation, or the reason it is dropped (FastChat's rules: human first, strict
    alternation, no empty turn, a trailing human turn is cut)."""
    turns = rec.get("conversations")
    if not isinstance(turns, list):
        raise UsageError(f"{where}: no 'conversations' list; expected sharegpt records with keys {FORMAT_KEYS['sharegpt']}")
    msgs: list[Message] = []
    for t in turns:
        if not isinstance(t, dict) or not isinstance(t.get("value"), str) or t.get("from") not in _SHAREGPT_ROLES:
            return "malformed turn"
        role = _SHAREGPT_ROLES[t["from"]]
        if not t["value"].strip():
            return "empty turn"
        msgs.append(Message(role, t["value"]))
    system = [msgs.pop(0)] if msgs and msgs[0].role == "system" else []
    while msgs and msgs[0].role != "user":  # FastChat skips a leading non-human turn
        msgs.pop(0)
    if msgs and msgs[-1].role == "user":
        msgs.pop()
    if not msgs:
        return "empty conversation"
    if any(m.role != ("user", "assistant")[i % 2] for i, m in enumerate(msgs)):
        return "roles do not alternate"
    return _make(source, system + msgs, rec.get("id"))


def from_messages(rec: dict[str, Any], where: str, source: str) -> Conversation | str:
    raw = rec.get("messages")
    if not isinstance(raw, list):
        raise UsageError(f"{where}: no 'messages' list; expected records with keys {FORMAT_KEYS['messages']}")
    msgs = []
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            return "malformed turn"
        if not m["content"].strip():
            return "empty turn"
        msgs.append(Message(m["role"], m["content"]))
    if not any(m.role == "assistant" for m in msgs):
        return "no assistant turn"
    return _make(source, msgs, rec.get("id"))


CONVERTERS = {"gsm8k": from_gsm8k, "alpaca": from_alpaca, "sharegpt": from_sharegpt, "messages": from_messages}


def convert(records: Iterable[tuple[str, dict[str, Any]]], fmt: str, source: str) -> tuple[list[Conversation], Counter]:
    if fmt not in CONVERTERS:
        raise UsageError(f"source {source!r}: unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    out, dropped = [], Counter()
    for where, rec in records:
        conv = CONVERTERS[fmt](rec, where, source)
        if isinstance(conv, str):
            dropped[conv] += 1
        elif any(not m.content.strip() for m in conv.messages):
            dropped["empty turn"] += 1
        else:
            out.append(conv)
    return out, dropped


def is_hub(path: str) -> bool:
    return not Path(path).expanduser().exists() and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) \
        and not path.endswith(SUFFIXES)
