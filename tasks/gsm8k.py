"""GSM8K (Cobbe et al. 2021): grade-school math word problems, exact match.

Data: the 1,319-problem test set and 7,473-problem train set ship in
``tasks/data/gsm8k/`` (MIT, openai/grade-school-math; checksums verified on
load). ``--gsm8k-data`` takes a local jsonl with the same fields or a hub
dataset id (``openai/gsm8k``).

Prompting: zero-shot chat by default (how SFT papers evaluate instruct
checkpoints), or ``--num-fewshot K`` exemplars from train as earlier chat
turns. Scoring reports both extractors, as lm-evaluation-harness does:

* strict: the official format ``#### N`` (the grader's ``ANS_RE``, first match);
* flexible: the last number in the completion (lm-eval's
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match that holds a digit: lm-eval
  also takes digit-less matches such as ``$$`` or ``...``, see docs/fidelity.md).

A custom ``--gsm8k-data`` file whose answer yields no number is refused at load
with its file and line, rather than scored 0 against an empty gold.

Both normalise like the official grader and lm-eval's ``regexes_to_ignore``:
strip commas, ``$`` and a trailing period, then compare numerically so
``18.00`` equals ``18``.

Example: ``harness run --model smollm2-135m-instruct --suite gsm8k --limit 50``
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.files import parse_jsonl, read_jsonl, read_verified
from harness.core.options import Options, SharedOptions, option
from harness.core.records import Completion, Example, Message, MetricSpec, Request, Result
from harness.core.stats import metric_means

DATA_DIR = Path(__file__).parent / "data" / "gsm8k"

INSTRUCTION = ("Solve the following math problem step by step. At the end, write the final answer "
               "as a number on its own line in the form \"#### <number>\".")

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_CALC_RE = re.compile(r"<<[^>]*>>")


def normalize_number(text: str | None) -> str | None:
    """``"$1,234.00."`` -> ``"1234"``; None when nothing numeric remains."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not s:
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def extract_strict(completion: str) -> str | None:
    m = STRICT_RE.search(completion)
    return m.group(1).strip() if m else None


def extract_flexible(completion: str) -> str | None:
    """The last match of lm-eval's flexible regex that holds a digit.

    lm-eval takes the last match even when it has no digit (``'so $$\\boxed{18}$$'``
    -> ``'$$'``, ``'#### 18\\n\\nThat is all...'`` -> ``'...'``) and then scores 0;
    such a match can never equal a number, so we skip it and take the last
    number instead (docs/fidelity.md).
    """
    for alt, digits in reversed(FLEXIBLE_RE.findall(completion)):
        match = alt or digits
        if any(ch.isdigit() for ch in match):
            return match.strip()
    return None


def gold_answer(answer: str) -> str:
    """The normalised number after the last ``####`` (or the whole answer); "" when there is none."""
    return normalize_number(answer.split("####")[-1]) or ""


def _check_row(row: dict[str, Any]) -> str | None:
    wrong = [k for k in ("question", "answer") if not isinstance(row[k], str)]
    if wrong:
        return (f"field(s) {', '.join(wrong)} must be a string, got "
                f"{', '.join(f'{row[k]!r} ({type(row[k]).__name__})' for k in wrong)}")
    return _check_gold(row)


def _check_gold(row: dict[str, Any]) -> str | None:
    if gold_answer(str(row["answer"])):
        return None
    return (f"answer {str(row['answer'])[-40:]!r} has no numeric gold answer; end each answer with "
            "'#### <number>' (as GSM8K does) or give the number alone")


def strip_calculator(answer: str) -> str:
    """Drop the ``<<48/2=24>>`` calculator annotations of GSM8K solutions."""
    return _CALC_RE.sub("", answer)


@cache
def _packaged(split: str) -> tuple[dict[str, Any], ...]:
    raw = read_verified(DATA_DIR, f"{split}.jsonl", gzipped=True)  # SHA256SUMS covers the uncompressed file
    return tuple(row for _, row in parse_jsonl(raw.decode("utf-8"), str(DATA_DIR / f"{split}.jsonl.gz")))


def load_rows(source: str | None, split: str) -> list[dict[str, Any]]:
    if source is None:
        return list(_packaged(split))
    path = Path(source).expanduser()
    if path.exists() or source.endswith((".jsonl", ".jsonl.gz", ".json")):
        if not path.exists():
            raise UsageError(f"--gsm8k-data {source!r} does not exist; pass a jsonl file with question/answer fields")
        rows = read_jsonl(path, ("question", "answer"), check=_check_row)
        if not rows:
            raise UsageError(f"--gsm8k-data {source!r} has no items; pass a jsonl file with one "
                             "{\"question\": ..., \"answer\": ...} object per line")
        return rows
    return _load_hub(source, split)


def _load_hub(dataset_id: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--gsm8k-data {dataset_id!r} looks like a hub dataset id, which needs the "
                         "'datasets' package (pip install datasets); or pass a local jsonl file") from None
    try:
        ds = datasets.load_dataset(dataset_id, "main", split=split)
    except Exception as exc:
        raise UsageError(f"cannot load hub dataset {dataset_id!r} ({type(exc).__name__}); "
                         "pass a local jsonl file with --gsm8k-data") from None
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


@dataclass(frozen=True)
class GSM8KOptions(Options):
    prefix = "gsm8k"

    num_fewshot: int = option(0, "GSM8K exemplars from train as chat turns", flag="--num-fewshot", low=0, high=64)
    data: str | None = option(None, "GSM8K test set: local jsonl or hub dataset id (default: packaged)")


class GSM8K:
    """Grade-school math, exact match (strict #### and flexible last number)."""

    name = "gsm8k"
    version = "2"  # 2: flexible extraction skips digit-less matches (docs/fidelity.md)
    turns = 1
    Options = GSM8KOptions
    needs_chat = True
    needs_judge = False
    needs_code_execution = False
    default_max_drop = 1.0  # accuracy points the CI gate allows by default
    metrics = (
        MetricSpec("strict", key="strict", kind="binary", scale=100.0, primary=True),
        MetricSpec("flexible", key="flexible", kind="binary", scale=100.0),
    )

    def __init__(self, options: GSM8KOptions | None = None, shared: SharedOptions | None = None) -> None:
        options, shared = options or GSM8KOptions(), shared or SharedOptions()
        self.num_fewshot = options.num_fewshot
        self.seed = shared.seed
        self.max_tokens = shared.max_tokens or 256
        self.source = options.data
        self._data_sha256: str | None = None

    def load(self, limit: int | None = None) -> list[Example]:
        rows = load_rows(self.source, "test")
        self._data_sha256 = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        rows = rows[:limit] if limit else rows
        return [Example(id=f"gsm8k/{i}", data={"question": r["question"], "answer": r["answer"],
                                               "gold": gold_answer(r["answer"])})
                for i, r in enumerate(rows)]

    def _fewshot(self) -> tuple[Message, ...]:
        if not self.num_fewshot:
            return ()
        train = _packaged("train")
        picks = random.Random(self.seed).sample(range(len(train)), self.num_fewshot)
        turns: list[Message] = []
        for i in picks:
            turns.append(Message("user", f"{INSTRUCTION}\n\nQuestion: {train[i]['question']}"))
            turns.append(Message("assistant", strip_calculator(train[i]["answer"])))
        return tuple(turns)

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Completion]]) -> list[Request]:
        shots = self._fewshot()
        return [Request(id=ex.id, messages=(*shots, Message("user", f"{INSTRUCTION}\n\nQuestion: {ex.data['question']}")),
                        max_tokens=self.max_tokens, temperature=0.0, seed=self.seed)
                for ex in examples]

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[Completion]],
              ctx: Any) -> list[Result]:
        return [score_one(ex, completions[ex.id][0]) for ex in examples]

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        scored = [r for r in results if r.error is None]
        out: dict[str, float] = {"n": len(results), "scored": len(scored), "errors": len(results) - len(scored)}
        return {**out, **metric_means(scored, self.metrics)}

    def describe(self) -> dict[str, Any]:
        return {"prompt": "fewshot-chat" if self.num_fewshot else "zeroshot-chat", "num_fewshot": self.num_fewshot,
                "max_tokens": self.max_tokens, "instruction": INSTRUCTION, "data": self.source or "packaged:test",
                "data_sha256": self._data_sha256}


def score_one(ex: Example, comp: Completion) -> Result:
    if comp.error is not None:
        return Result(id=ex.id, error=f"generation failed: {comp.error}")
    text = comp.texts[0]
    strict, flexible = extract_strict(text), extract_flexible(text)
    gold = ex.data["gold"]
    return Result(
        id=ex.id,
        scores={"strict": float(normalize_number(strict) == gold), "flexible": float(normalize_number(flexible) == gold)},
        extracted={"strict": strict, "flexible": flexible, "gold": gold},
    )
