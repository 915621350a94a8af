"""The file kernel (harness/core/files.py) and the one rule for options that do not change the output."""

from __future__ import annotations

import gzip
import hashlib
import json
import math

import pytest

from harness.core.errors import UsageError
from harness.core.files import (
    read_jsonl,
    read_jsonl_numbered,
    read_verified,
    write_json_atomic,
    write_jsonl_atomic,
)
from harness.core.models import ModelSpec, output_identity


def test_read_jsonl_names_the_line_and_the_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": 1, "a": 2}\n\n{"q": 3}\n')
    assert read_jsonl_numbered(path) == [(1, {"q": 1, "a": 2}), (3, {"q": 3})]
    with pytest.raises(UsageError, match=r"d\.jsonl:3: missing field\(s\) a; expected one JSON object per line "
                                         "with fields q, a"):
        read_jsonl(path, ("q", "a"))
    path.write_text('{"q": 1}\n[1, 2]\n')
    with pytest.raises(UsageError, match=r"d\.jsonl:2: got a JSON list; expected one JSON object per line"):
        read_jsonl(path)
    path.write_text('{"q": 1}\n{"q": \n')
    with pytest.raises(UsageError, match=r"d\.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_read_jsonl_reads_gzip_and_refuses_a_corrupt_one(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"x": 1}\n{"x": 2}\n'))
    assert read_jsonl(path) == [{"x": 1}, {"x": 2}]
    path.write_bytes(gzip.compress(b'{"x": 1}\n')[:-6])
    with pytest.raises(UsageError, match="is corrupt"):
        read_jsonl(path)
    with pytest.raises(UsageError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_read_verified_checks_sha256sums(tmp_path):
    raw = b'{"x": 1}\n'
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    digest = hashlib.sha256(raw).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  a.jsonl\n{digest} *b.jsonl\n")
    assert read_verified(tmp_path, "a.jsonl") == raw
    assert read_verified(tmp_path, "b.jsonl", gzipped=True) == raw  # the checksum covers the content
    (tmp_path / "a.jsonl").write_bytes(raw + b"\n")
    with pytest.raises(UsageError, match=r"a\.jsonl fails its checksum .*reinstall sft-harness"):
        read_verified(tmp_path, "a.jsonl")
    with pytest.raises(UsageError, match="cannot be read"):
        read_verified(tmp_path, "nope.jsonl")


def test_atomic_writes_leave_no_temp_file_and_write_strict_json(tmp_path):
    write_json_atomic(tmp_path / "s.json", {"v": math.nan, "w": [1.5, math.inf]})
    write_jsonl_atomic(tmp_path / "r.jsonl", [{"a": 1}, {"a": -math.inf}])
    assert json.loads((tmp_path / "s.json").read_text()) == {"v": None, "w": [1.5, None]}
    assert (tmp_path / "r.jsonl").read_text() == '{"a": 1}\n{"a": null}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "s.json"]


@pytest.mark.parametrize("option", ["batch_size", "max_num_seqs", "gpu_memory_utilization", "tensor_parallel_size",
                                    "enable_prefix_caching", "concurrency", "timeout"])
def test_one_rule_for_options_that_do_not_change_the_output(option):
    def identity(args):
        return output_identity(ModelSpec("vllm", "org/model", args), kind="vllm", target="org/model")

    assert identity({option: 7}) == identity({})
    assert identity({"max_model_len": 512}) != identity({})  # this one can change the output
