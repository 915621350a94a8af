"""Durable journal: torn lines dropped with a warning, corrupted records rejected, keys deduplicated."""

from __future__ import annotations

import logging

from harness.core.journal import Journal, encode, read_records


def test_roundtrip_and_last_record_wins(tmp_path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append("a", {"v": 1})
        j.append("b", {"v": 2})
        j.append("a", {"v": 3})
    again = Journal(path)
    assert len(again) == 2
    assert again.get("a")["v"] == 3
    again.close()


def test_torn_last_line_is_dropped_with_warning(tmp_path, caplog) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append("a", {"v": 1})
    line = encode({"key": "b", "v": 2})
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="harness"):
        j = Journal(path)
    assert "a" in j and "b" not in j
    assert "torn" in caplog.text
    j.append("c", {"v": 3})  # appending after a torn line must not glue onto it
    j.close()
    keys = [r["key"] for r in read_records(path)]
    assert keys == ["a", "c"]


def test_corrupted_record_fails_checksum(tmp_path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text(encode({"key": "a", "score": 1}).replace('"score": 1', '"score": 9'))
    assert list(read_records(path)) == []
