"""`harness run` end to end with the HF adapter on a tiny checkpoint: files, resume, cache identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.journal import read_records

pytest.importorskip("torch")


def run_dir_of(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "gsm8k.samples.jsonl").read_text().splitlines()]


@pytest.fixture
def model(tiny_llama: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    return copy


def test_run_writes_files_and_resumes(model: Path, tmp_path: Path, capsys, isolated_caches) -> None:
    out = tmp_path / "runs"
    args = ["run", "--model", f"hf:{model}", "--suite", "gsm8k", "--limit", "3", "--max-tokens", "8", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rd = run_dir_of(out)
    assert {"config.json", "summary.json", "report.md", "gsm8k.samples.jsonl", "gsm8k.generations.jsonl"} <= {
        p.name for p in rd.iterdir()}
    assert "gsm8k" in printed and "strict" in printed
    config = json.loads((rd / "config.json").read_text())
    assert len(config["adapter"]["fingerprint"]) == 64
    assert config["adapter"]["chat_template_sha256"]
    assert config["tasks"]["gsm8k"]["version"] == "2"
    assert config["environment"]["packages"]["torch"]
    rows = samples(rd)
    assert [r["id"] for r in rows] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert set(rows[0]["scores"]) == {"strict", "flexible"}
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["tasks"]["gsm8k"]["n"] == 3

    journal_lines = len(list(read_records(rd / "gsm8k.generations.jsonl")))
    assert main(args) == 0  # same command: resumes, generates nothing
    assert len(list(read_records(rd / "gsm8k.generations.jsonl"))) == journal_lines
    assert samples(rd) == rows


def test_overwritten_checkpoint_is_not_served_from_cache(model: Path, tmp_path: Path, isolated_caches) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "runs"
    args = ["run", "--model", f"hf:{model}", "--suite", "gsm8k", "--limit", "2", "--max-tokens", "6", "--out", str(out)]
    assert main(args) == 0
    rd = run_dir_of(out)
    before = len(list(read_records(rd / "gsm8k.generations.jsonl")))
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("layers.0.mlp.down_proj.weight"))
    tensors[name] = tensors[name] * 3.0
    save_file(tensors, weights, metadata={"format": "pt"})  # overwrite in place, same path
    assert main(args) == 0
    after = list(read_records(rd / "gsm8k.generations.jsonl"))
    assert len(after) == before + 2  # both items regenerated under the new fingerprint
    config = json.loads((rd / "config.json").read_text())
    assert config["adapter"]["fingerprint"] != ""  # the run records the new fingerprint


def test_report_over_two_runs_has_both_rows(model: Path, tmp_path: Path, capsys, isolated_caches) -> None:
    out = tmp_path / "runs"
    base = ["run", "--model", f"hf:{model}", "--suite", "gsm8k", "--limit", "2", "--max-tokens", "4", "--out", str(out)]
    assert main([*base, "--label", "first"]) == 0
    assert main([*base, "--label", "second", "--num-fewshot", "1"]) == 0
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    capsys.readouterr()
    assert main(["report", *map(str, runs)]) == 0
    table = capsys.readouterr().out
    assert "first" in table and "second" in table


def test_journaled_rerun_loads_no_weights_and_a_new_task_version_regenerates_nothing(
        model: Path, tmp_path: Path, monkeypatch, isolated_caches) -> None:
    import harness.adapters.hf as hf
    from harness.tasks.gsm8k import GSM8K

    out = tmp_path / "runs"
    args = ["run", "--model", f"hf:{model}", "--suite", "gsm8k", "--limit", "2", "--max-tokens", "4", "--out", str(out)]
    assert main(args) == 0
    rd = run_dir_of(out)
    journal = (rd / "gsm8k.generations.jsonl").read_bytes()

    def no_load(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded although every request was journaled")

    monkeypatch.setattr(hf.HFAdapter, "__init__", no_load)
    monkeypatch.setattr(GSM8K, "version", "1-fixed")  # a scorer fix
    assert main(args) == 0
    assert (rd / "gsm8k.generations.jsonl").read_bytes() == journal  # nothing regenerated
    assert json.loads((rd / "summary.json").read_text())["tasks"]["gsm8k"]["version"] == "1-fixed"
    config = json.loads((rd / "config.json").read_text())
    assert len(config["adapter"]["fingerprint"]) == 64  # the adapter recorded on the first run is kept
