"""GSM8K extraction and scoring on hand-written completions with known answers."""

from __future__ import annotations

import gzip
import json

import pytest

from harness.core.errors import UsageError
from harness.core.records import Completion, Example
from harness.tasks.gsm8k import (
    GSM8K,
    GSM8KOptions,
    extract_flexible,
    extract_strict,
    gold_answer,
    load_rows,
    normalize_number,
    score_one,
)

CASES = [
    # completion, gold, strict verdict, flexible verdict
    ("She pays 617 + 617 = 1,234 dollars.\n#### 1,234", "1234", 1.0, 1.0),
    ("The total is $18.00", "18", 0.0, 1.0),
    ("The answer is 18.", "18", 0.0, 1.0),
    ("I am not sure how to solve this.", "18", 0.0, 0.0),
    ("#### 18\nThen I thought again and got 20", "18", 1.0, 0.0),  # strict: first ####; flexible: last number
    ("#### -3", "-3", 1.0, 1.0),
    ("#### 0.5", "0.5", 1.0, 1.0),
    ("#### 17", "18", 0.0, 0.0),
    ("", "18", 0.0, 0.0),
]


@pytest.mark.parametrize("text,gold,strict,flexible", CASES)
def test_both_extractors(text: str, gold: str, strict: float, flexible: float) -> None:
    ex = Example(id="x", data={"gold": gold})
    res = score_one(ex, Completion(id="x", texts=(text,)))
    assert res.scores == {"strict": strict, "flexible": flexible}
    assert res.error is None


def test_extracted_values_are_recorded() -> None:
    assert extract_strict("so #### 1,234") == "1,234"
    assert extract_flexible("The total is $18.00") == "$18.00"
    assert extract_flexible("The answer is 18.") == "18."
    assert extract_flexible("no number") is None
    assert extract_strict("The answer is 18") is None


def test_normalisation_matches_official_grader() -> None:
    assert normalize_number("1,234") == "1234"
    assert normalize_number("$18.00") == "18"
    assert normalize_number("18.") == "18"
    assert normalize_number("18.50") == normalize_number("18.5")
    assert normalize_number("$") is None
    assert normalize_number("1.2.3") is None


def test_gold_answer_from_reference_solution() -> None:
    assert gold_answer("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18") == "18"
    assert gold_answer("#### 1,000") == "1000"


def test_generation_error_is_an_error_not_a_score() -> None:
    res = score_one(Example(id="x", data={"gold": "1"}), Completion(id="x", error="timeout"))
    assert res.error and not res.scores


def test_packaged_data_loads_with_checksum() -> None:
    task = GSM8K()
    examples = task.load()
    assert len(examples) == 1319
    assert examples[0].data["gold"] == "18"
    assert len(load_rows(None, "train")) == 7473


def test_aggregate_counts_errors_and_excludes_them() -> None:
    task = GSM8K()
    exs = [Example(id=str(i), data={"gold": "5"}) for i in range(4)]
    comps = [Completion(id="0", texts=("#### 5",)), Completion(id="1", texts=("#### 4",)),
             Completion(id="2", texts=("5",)), Completion(id="3", error="boom")]
    results = [score_one(e, c) for e, c in zip(exs, comps, strict=True)]
    agg = task.aggregate(results)
    assert agg["errors"] == 1 and agg["scored"] == 3
    assert agg["strict"] == pytest.approx(1 / 3)
    assert agg["flexible"] == pytest.approx(2 / 3)


def test_fewshot_turns_are_chat_messages() -> None:
    task = GSM8K(GSM8KOptions(num_fewshot=2))
    exs = task.load(limit=1)
    (req,) = task.requests(exs, 0, {})
    roles = [m.role for m in req.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert "<<" not in req.messages[1].content  # calculator annotations stripped
    assert "####" in req.messages[1].content


def test_local_jsonl_source_and_malformed_line(tmp_path) -> None:
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    task = GSM8K(GSM8KOptions(data=str(good)))
    assert task.load()[0].data["gold"] == "2"
    bad = tmp_path / "b.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{not json\n")
    with pytest.raises(UsageError, match=r"b\.jsonl\.gz:2"):
        GSM8K(GSM8KOptions(data=str(bad))).load()
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UsageError, match="missing field"):
        GSM8K(GSM8KOptions(data=str(missing))).load()


# -- where we differ from lm-eval on purpose (docs/fidelity.md) ------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("so $$\\boxed{18}$$", "18"),  # lm-eval's last match is '$$'
    ("#### 18\n\nThat is all...", "18"),  # lm-eval's last match is '...'
    ("The answer is 42, ...", "42,"),
    ("Total: $5, then .. and $$", "$5,"),
    ("nothing but ... and $$", None),  # no digit anywhere: nothing extracted
])
def test_flexible_skips_matches_without_a_digit(text: str, expected: str | None) -> None:
    assert extract_flexible(text) == expected


def test_flexible_digitless_tail_still_scores_the_number() -> None:
    ex = Example(id="x", data={"gold": "18"})
    res = score_one(ex, Completion(id="x", texts=("#### 18\n\nThat is all...",)))
    assert res.scores == {"strict": 1.0, "flexible": 1.0}


@pytest.mark.parametrize("answer", ["The answer is unknown.", "#### none", "#### ", "eighteen"])
def test_custom_file_without_a_numeric_gold_is_refused_with_its_line(tmp_path, answer: str) -> None:
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": "#### 3"}) + "\n\n"
                    + json.dumps({"question": "q2", "answer": answer}) + "\n")
    with pytest.raises(UsageError, match=r"custom\.jsonl:3: .*no numeric gold answer"):
        GSM8K(GSM8KOptions(data=str(path))).load()


def test_custom_file_gold_from_last_number_without_hashes(tmp_path) -> None:
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1,000"}) + "\n")
    assert GSM8K(GSM8KOptions(data=str(path))).load()[0].data["gold"] == "1000"
