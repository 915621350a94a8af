"""Held-out probes in studies: picked by content hash, never trained on, counted in the plan, scored at every
stage into the forgetting curve with paired intervals (harness.train.holdout, harness.readout.forgetting)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.conversations import Conversation
from harness.core.errors import UsageError
from harness.core.records import Message
from harness.train.holdout import content_hash, split_holdout
from harness.train.study import load_split
from harness.train.study_file import parse_study

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def _conv(i: int, text: str | None = None) -> Conversation:
    return Conversation(f"c{i}", "math", (Message("user", text or f"question {i}"), Message("assistant", f"a{i}")))


def _study(holdout: int | None = 4, suites: tuple[str, ...] = ("holdout",)) -> dict:
    data = tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())
    if holdout is not None:
        for s in data["sources"].values():
            s["holdout"] = holdout
    data["eval"]["suites"] = list(suites)
    return data


def test_holdout_is_chosen_by_content_whatever_the_order_ids_or_source():
    convs = [_conv(i) for i in range(30)]
    _, held = split_holdout(convs, 5)
    renamed = [Conversation(f"other{c.id}", "general", c.messages) for c in reversed(convs)]
    _, held_again = split_holdout(renamed, 5)
    assert sorted(map(content_hash, held)) == sorted(map(content_hash, held_again))
    assert sorted(map(content_hash, held)) == sorted(map(content_hash, convs))[:5]


def test_every_copy_of_a_held_out_text_leaves_the_training_pool():
    convs = [_conv(i) for i in range(20)]
    _, held = split_holdout(convs, 3)
    twin = Conversation("dup", "math", held[0].messages)  # the same text twice in a file
    train, held2 = split_holdout([*convs, twin], 3)
    assert len(held2) == 3 and len(train) == 17
    assert not {content_hash(c) for c in train} & {content_hash(c) for c in held2}


def test_the_holdout_suite_expands_to_one_probe_per_source_with_the_default_200():
    data = _study(holdout=None, suites=("gsm8k", "holdout"))
    study = parse_study(data, EXAMPLES)
    assert study.eval.suites == ("gsm8k", "holdout_math", "holdout_code", "holdout_general")
    assert {s.holdout for s in study.sources} == {200}
    data = _study(holdout=4)
    data["sources"]["code"]["holdout"] = 0  # this source gets no probe
    assert parse_study(data, EXAMPLES).eval.suites == ("holdout_math", "holdout_general")


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["eval"].update(suites=["gsm8k"]),
     r'^\[sources.math\] holdout: the study scores no held-out probe; add "holdout" to \[eval\] suites'),
    (lambda d: [s.update(holdout=0) for s in d["sources"].values()],
     r'^\[eval\] suites names "holdout", but every source has holdout = 0'),
    (lambda d: d["sources"]["math"].update(holdout=-1), r"^\[sources.math\] holdout: expected an integer >= 0"),
    (lambda d: d["sources"]["math"].update(holdout="4"), r"^\[sources.math\] holdout: expected an integer >= 0"),
])
def test_bad_holdout_settings_fail_in_one_line(edit, message):
    data = _study()
    edit(data)
    with pytest.raises(UsageError, match=message):
        parse_study(data, EXAMPLES)


def test_a_holdout_that_takes_every_example_is_refused_before_training():
    data = _study()
    data["sources"]["math"]["holdout"] = 1000
    with pytest.raises(UsageError, match=r"^source 'math' has 0 examples left .*40 held out\); check its file, "
                                         r"its filter and its holdout"):
        load_split(parse_study(data, EXAMPLES))


def test_held_out_examples_are_not_in_any_stage_and_the_count_is_drawn_from_the_rest():
    study = parse_study(_study(holdout=4), EXAMPLES)
    sources, held = load_split(study)
    assert {n: len(h) for n, h in held.items()} == {"math": 4, "code": 4, "general": 4}
    assert {n: len(c) for n, c in sources.items()} == {"math": 24, "code": 24, "general": 24}
    held_hashes = {content_hash(c) for h in held.values() for c in h}
    assert not held_hashes & {content_hash(c) for cs in sources.values() for c in cs}


def test_dry_run_counts_the_held_out_examples(tmp_path, capsys):
    text = (EXAMPLES / "tiny_cpu.toml").read_text().replace('path = "', f'path = "{EXAMPLES}/')
    text = text.replace('suites = ["gsm8k"]', 'suites = ["gsm8k", "holdout"]').replace("count = 24", "count = 24\nholdout = 5")
    (tmp_path / "s.toml").write_text(text)
    assert main(["study", str(tmp_path / "s.toml"), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "held out (never trained on): math 5 ex -> holdout_math, code 5 ex -> holdout_code, general 5 ex -> " \
           "holdout_general" in out
    assert not (tmp_path / "o").exists()  # a dry run writes nothing, not even the held-out files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.train.study import load_sources
    from harness.train.tiny import build_tiny_llama, conversation_texts
    study = parse_study(_study(holdout=0, suites=("gsm8k",)) | {"sources": _plain_sources()}, EXAMPLES)
    texts = conversation_texts([c for v in load_sources(study).values() for c in v])
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", texts)


def _plain_sources() -> dict:
    return tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())["sources"]


def test_staged_study_scores_held_out_probes_into_forgetting_curves(tiny, tmp_path, monkeypatch, isolated_caches):
    """Tiny random llama: the exact records trained on exclude every held-out item; every stage is scored on
    the same held-out items; the report has the curve table, its CSV and its plot, paired against the stage
    before and the base model."""
    pytest.importorskip("harness.adapters.hf")
    from harness.train import sft
    from harness.train.study import run_study

    trained: list[Conversation] = []
    encode_all = sft.encode_all
    monkeypatch.setattr(sft, "encode_all", lambda tok, convs, n: (trained.extend(convs), encode_all(tok, convs, n))[1])
    data = _study(holdout=4)
    data["base_model"] = str(tiny)
    data["train"]["max_steps"] = 1
    data["eval"].pop("max_tokens", None)
    data["eval"].pop("limit")  # [eval] limit caps every task, held-out probes included
    data["grid"].update(strategies=["sequential", "dmt"], k=[1])
    study = parse_study(data, EXAMPLES, out=str(tmp_path / "study"))
    outcome = run_study(study)
    assert outcome.trained == 5 and outcome.evaluated == 1 + 3 + 2

    held = {n: [json.loads(line) for line in (tmp_path / "study" / "holdout" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("math", "code", "general")}
    held_texts = {json.dumps([[m["role"], m["content"]] for m in r["messages"]], ensure_ascii=False)
                  for rows in held.values() for r in rows}
    trained_texts = {json.dumps([[m.role, m.content] for m in c.messages], ensure_ascii=False) for c in trained}
    assert len(held_texts) == 12 and len(trained) > 0 and not held_texts & trained_texts
    index = json.loads((tmp_path / "study" / "study.json").read_text())
    assert set(index["holdout"]) == {"holdout_math", "holdout_code", "holdout_general"}

    report = tmp_path / "study" / "report"
    md = (report / "report.md").read_text()
    assert "## Forgetting curves" in md and (report / "forgetting.png").exists()
    assert "![forgetting.png](forgetting.png)" in md
    rows = list(csv.DictReader((report / "forgetting.csv").open()))
    seq_math = [r for r in rows if r["strategy"] == "sequential" and r["ability"] == "holdout_math"]
    assert [int(r["stage"]) for r in seq_math] == [0, 1, 2, 3]
    assert [r["stage_name"] for r in seq_math] == ["base", "code", "math", "general"]
    dmt = [r for r in rows if r["strategy"] == "dmt-k1" and r["ability"] == "holdout_general"]
    assert [int(r["stage"]) for r in dmt] == [0, 1, 2]
    # paired on the same items: every stage's delta is its NLL minus the one before (pooled over the same tokens)
    for prev, cur in zip(seq_math, seq_math[1:], strict=False):
        assert float(cur["delta_prev"]) == pytest.approx(float(cur["nll"]) - float(prev["nll"]), abs=1e-9)
        assert float(cur["delta_prev_low"]) <= float(cur["delta_prev"]) <= float(cur["delta_prev_high"])
        assert float(cur["delta_base"]) == pytest.approx(float(cur["nll"]) - float(seq_math[0]["nll"]), abs=1e-9)
    assert {r["items"] for r in rows} == {"4"}
    samples = [tmp_path / "study" / "runs" / Path(d).name / "holdout_math.samples.jsonl" for d in outcome.run_dirs]
    ids = [sorted(json.loads(line)["id"] for line in p.read_text().splitlines()) for p in samples]
    assert all(i == ids[0] for i in ids) and len(ids[0]) == 4

    # A new process has parsed no study: it rebuilds holdout_<source> from the name and the recorded options,
    # so re-scoring a stage's run from its files works and changes nothing.
    run = Path(outcome.run_dirs[-1])
    before = (run / "summary.json").read_bytes()
    res = subprocess.run([sys.executable, "-m", "harness", "score", str(run)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "summary.json").read_bytes() == before


def test_max_chars_drops_long_conversations_before_the_holdout_and_counts_them():
    from harness.train.data import SourceSpec, load_source_split

    spec = SourceSpec("math", str(EXAMPLES / "tiny_gsm8k.jsonl"), "gsm8k", max_chars=600, holdout=2)
    train, held, stats = load_source_split(spec)
    assert all(sum(len(m.content) for m in c.messages) <= 600 for c in [*train, *held])
    assert stats.dropped == {"longer than max_chars 600": 40 - len(train) - len(held)} and len(held) == 2


def test_a_staged_study_embeds_its_own_general_source_and_reports_representations_per_stage(tiny, tmp_path,
                                                                                           isolated_caches):
    """Issue 14.2: the study shows the separation numbers per stage, the general ability from the study's data."""
    pytest.importorskip("sklearn")
    pytest.importorskip("harness.adapters.hf")
    from harness.train.study import run_study

    data = _study(holdout=None, suites=("representations",))
    data["base_model"] = str(tiny)
    data["train"]["max_steps"] = 1
    data["eval"].pop("max_tokens", None)
    data["eval"].pop("limit")
    data["eval"]["representations"] = {"per_ability": 6, "max_tokens": 32}
    data["grid"].update(strategies=["sequential"])
    study = parse_study(data, EXAMPLES, out=str(tmp_path / "study"))
    outcome = run_study(study)
    assert outcome.evaluated == 1 + 3  # the base model and each of the three stages

    general = tmp_path / "study" / "representations" / "general.jsonl"
    written = [json.loads(line) for line in general.read_text().splitlines()]
    assert len(written) == 6 and all(r["id"].startswith("general:") for r in written)
    for run in outcome.run_dirs:
        described = json.loads((Path(run) / "config.json").read_text())["tasks"]["representations"]
        assert described["sources"]["general"] == f"{general.resolve()} (first user turns)"
    md = (tmp_path / "study" / "report" / "report.md").read_text()
    section = md.split("## Representations", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "general 6" in line]
    assert len(rows) == 4, section  # one row per evaluated checkpoint, each with 6 general samples
    assert "Paired against" in section
