"""Probes end to end on a tiny random Llama: the runner, a kill and resume, and a probe that detects training.

The detection test is the probe's reason to exist: one full optimizer step on
four GSM8K test items (their reference solutions as labels, tokenised exactly
as the probe scores them) must lower ``probe_math`` NLL on each of those
items, ``harness report`` must show the change with the paired interval, and
``harness check`` must read lower NLL as better (and a rise as a regression).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main

pytest.importorskip("torch")


@pytest.fixture
def model(tiny_llama: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    return copy


def run_dirs(out: Path) -> dict[str, Path]:
    """Run directories by label."""
    return {json.loads((d / "config.json").read_text())["label"]: d for d in out.iterdir() if d.is_dir()}


def item_nll(run_dir: Path, task: str) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / f"{task}.samples.jsonl").read_text().splitlines()]
    return {r["id"]: r["scores"]["nll"] for r in rows}


def test_probe_run_resumes_after_a_kill_without_repeating_a_request(model: Path, tmp_path: Path, monkeypatch,
                                                                     isolated_caches) -> None:
    from harness.adapters.hf import HFAdapter

    real = HFAdapter.loglikelihood
    sent: list[str] = []
    kill_after = [2]

    def counted(self, requests, on_result=None):
        sent.extend(r.id for r in requests)
        landed = [0]

        def callback(i, res):
            on_result(i, res)
            landed[0] += 1
            if landed[0] == kill_after[0]:
                raise KeyboardInterrupt  # killed mid-pass, two results journaled
        return real(self, requests, callback if on_result else None)

    monkeypatch.setattr(HFAdapter, "loglikelihood", counted)
    args = ["run", "--model", f"hf:{model}", "--suite", "probes", "--limit", "3", "--out", str(tmp_path / "runs")]
    assert main(args) == 130
    kill_after[0], sent[:] = 0, []
    assert main(args) == 0
    assert len(sent) == 4  # 6 requests, 2 journaled before the kill: 0 repeated
    sent.clear()
    assert main(args) == 0 and sent == []
    (rd,) = run_dirs(tmp_path / "runs").values()
    summary = json.loads((rd / "summary.json").read_text())["tasks"]
    for task in ("probe_math", "probe_code"):
        m = summary[task]["metrics"]
        assert summary[task]["n"] == 3 and summary[task]["errors"] == 0
        assert m["nll"] > 1.0 and m["bits_per_byte"] > 0 and m["tokens"] > 0  # a random model: far from 0


def one_training_step(model: Path, task_name: str, limit: int, out: Path, lr: float = 1e-3) -> Path:
    """One AdamW step of full fine-tuning on a probe's first items, loss on the continuation tokens only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.adapters.tokens import encode_for_scoring
    from harness.tasks import build_task

    task = build_task(task_name)
    requests = task.requests(task.load(limit), 0, {})
    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    loss = torch.zeros(())
    for req in requests:
        x = encode_for_scoring(tokenizer, req)  # the very tokens and split the probe scores
        ids = torch.tensor([x.ids])
        labels = ids.clone()
        labels[0, :x.start] = -100
        loss = loss + net(input_ids=ids, labels=labels).loss / len(requests)
    loss.backward()
    opt.step()
    net.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_one_step_on_math_items_lowers_their_probe_nll_and_report_and_gate_see_it(
        model: Path, tmp_path: Path, capsys, isolated_caches) -> None:
    out = tmp_path / "runs"
    common = ["--suite", "probe_math", "--limit", "4", "--out", str(out)]
    assert main(["run", "--model", f"hf:{model}", "--label", "before", *common]) == 0
    trained = one_training_step(model, "probe_math", 4, tmp_path / "trained")
    assert main(["run", "--model", f"hf:{trained}", "--label", "after", *common]) == 0
    runs = run_dirs(out)
    before, after = item_nll(runs["before"], "probe_math"), item_nll(runs["after"], "probe_math")
    assert before.keys() == after.keys() and len(before) == 4
    assert all(after[i] < before[i] - 0.05 for i in before), (before, after)  # every trained item moved

    capsys.readouterr()
    assert main(["report", str(runs["before"]), str(runs["after"]), "--baseline", str(runs["before"])]) == 0
    report = capsys.readouterr().out
    row = next(line for line in report.splitlines() if "probe_math nll" in line and "after" in line)
    assert "paired cluster bootstrap" in row and "4 items" in row
    assert "| −" in row  # Δ = after − before is negative: NLL fell
    assert "Lower is better for probe_math bits_per_byte, probe_math nll" in report

    # Lower is better: the trained run passes against the untrained one, the reverse is a regression.
    assert main(["check", str(runs["after"]), "--baseline", str(runs["before"])]) == 0
    assert main(["check", str(runs["before"]), "--baseline", str(runs["after"])]) == 1
    gate = capsys.readouterr().out
    assert "REGRESSION probe_math nll" in gate and "lower is better: a drop here is a rise" in gate
