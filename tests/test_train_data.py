"""Converters, loaders, the keyword filter and subsampling of harness.train.data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness.core.errors import UsageError
from harness.core.records import Message
from harness.train.data import (
    SourceSpec,
    convert,
    keyword_filter,
    load_source,
    read_records,
    subsample,
)

FIX = Path(__file__).parent / "fixtures" / "train"
EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def test_sharegpt_drops_malformed_with_counts():
    convs, dropped = convert(read_records(str(FIX / "sharegpt_cases.json")), "sharegpt", "general")
    by_id = {c.id: c for c in convs}
    assert sorted(by_id) == ["general:gpt_first", "general:ok", "general:system", "general:trailing_human"]
    assert dict(dropped) == {"empty turn": 1, "empty conversation": 2, "roles do not alternate": 1,
                             "malformed turn": 1}
    assert by_id["general:system"].messages == (Message("system", "Be brief."), Message("user", "Hi"),
                                                Message("assistant", "Hey."))
    # a leading assistant turn is skipped and a trailing user turn cut (FastChat's rules)
    assert [m.role for m in by_id["general:gpt_first"].messages] == ["user", "assistant"]
    assert by_id["general:trailing_human"].messages[-1] == Message("assistant", "B.")


def test_gsm8k_and_rft_converters():
    convs, _ = convert(read_records(str(EXAMPLES / "tiny_gsm8k.jsonl")), "gsm8k", "math")
    assert len(convs) == 40
    assert convs[0].messages[0].content.startswith("Natalia sold clips")
    assert convs[0].messages[1].content.endswith("#### 72")
    rft, _ = convert(read_records(str(FIX / "gsm8k_rft.jsonl")), "gsm8k", "math")  # query/response keys
    assert [c.messages[1].content for c in rft] == ["2+3=5\n#### 5", "2*3=6\n#### 6"]


def test_alpaca_joins_instruction_and_input():
    convs, _ = convert(read_records(str(FIX / "alpaca_ok.json")), "alpaca", "code")
    assert convs[0].messages == (Message("user", "Reverse a string.\n\nabc"), Message("assistant", "cba"))
    assert convs[1].messages[0].content == "Write a hello world program in Python."


def test_malformed_files_name_file_line_and_expectation():
    with pytest.raises(UsageError, match=r"gsm8k_bad_line\.jsonl:2: not valid JSON.*one JSON object per line"):
        read_records(str(FIX / "gsm8k_bad_line.jsonl"))
    with pytest.raises(UsageError, match=r"alpaca_missing_output\.json:record 1: no string field 'output'.*instruction"):
        convert(read_records(str(FIX / "alpaca_missing_output.json")), "alpaca", "code")
    with pytest.raises(UsageError, match="unknown format 'csv'"):
        convert([], "csv", "x")
    with pytest.raises(UsageError, match="does not exist"):
        read_records(str(FIX / "nope.jsonl"))


def test_compressed_and_parquet_files_load_the_same(tmp_path):
    rows = [json.loads(line) for line in (EXAMPLES / "tiny_gsm8k.jsonl").read_text().splitlines()[:5]]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    with gzip.open(tmp_path / "a.json.gz", "wt") as f:
        json.dump(rows, f)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    loaded = [convert(read_records(str(tmp_path / n)), "gsm8k", "math")[0] for n in ("a.jsonl.gz", "a.json.gz", "a.parquet")]
    assert loaded[0] == loaded[1] == loaded[2] and len(loaded[0]) == 5


def test_keyword_filter_matches_word_prefixes():
    convs, _ = convert(read_records(str(EXAMPLES / "tiny_sharegpt.json")), "sharegpt", "general")
    kept, removed = keyword_filter(convs, ("code", "math"))
    assert removed == 3  # "math homework", "mathematics", "Write code"; "barcode" stays
    assert {"general:hand_math_1", "general:hand_math_2", "general:hand_code_1"}.isdisjoint(c.id for c in kept)
    assert "general:hand_code_2" in {c.id for c in kept}
    assert keyword_filter(convs, ()) == (convs, 0)


def test_subsample_is_deterministic_ordered_and_sized():
    convs, _ = convert(read_records(str(EXAMPLES / "tiny_gsm8k.jsonl")), "gsm8k", "math")
    a = subsample(convs, fraction=0.25, seed=7)
    assert len(a) == 10 and a == subsample(convs, fraction=0.25, seed=7)
    assert a != subsample(convs, fraction=0.25, seed=8)
    assert [convs.index(c) for c in a] == sorted(convs.index(c) for c in a)  # original order kept
    assert len(subsample(convs, count=3, seed=1)) == 3
    assert subsample(convs, count=100) == convs and subsample(convs, fraction=0.0) == []
    with pytest.raises(UsageError):
        subsample(convs, fraction=-0.5)
    with pytest.raises(UsageError):
        subsample(convs, fraction=0.5, count=3)


def test_load_source_reports_counts():
    convs, stats = load_source(SourceSpec("general", "tiny_sharegpt.json", "sharegpt", count=20,
                                          filter_keywords=("code", "math")), base_dir=EXAMPLES)
    assert (stats.records, stats.filtered, stats.kept, len(convs)) == (40, 3, 20, 20)
    assert stats.dropped == {"empty turn": 1, "empty conversation": 1}


def test_ids_are_stable_content_hashes():
    a, _ = convert(read_records(str(FIX / "alpaca_ok.json")), "alpaca", "code")
    b, _ = convert(read_records(str(FIX / "alpaca_ok.json")), "alpaca", "code")
    assert [c.id for c in a] == [c.id for c in b] and a[0].id != a[1].id and a[0].id.startswith("code:")


def test_hub_dataset_ids_go_through_datasets(monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"instruction": "Say hi.", "input": "", "output": "hi"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    convs, stats = load_source(SourceSpec("code", "sahil280114/codealpaca", "alpaca", split="train"))
    assert calls == [("sahil280114/codealpaca", "train")] and stats.kept == 1
    assert convs[0].messages[1].content == "hi"

    def offline(name, split):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UsageError, match="cannot be loaded: offline"):
        load_source(SourceSpec("code", "org/missing", "alpaca"))
