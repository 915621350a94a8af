"""Slow: the embedded SmolLM2-135M-Instruct on both local lm-eval tasks, through our bridge and through
lm-eval's own ``hf`` model, which must agree item by item.

* ``local_mc`` with raw contexts: every choice's log-likelihood within 1e-4 and identical ``acc`` /
  ``acc_norm`` verdicts. (Batching differs: lm-eval sorts and right-pads its own batches, we sort by
  length and left-pad with explicit positions; fp32 keeps the sums within the tolerance.)
* ``local_gsm`` with the checkpoint's chat template (lm-eval's ``--apply_chat_template``): identical
  greedy generations, hence identical strict and flexible verdicts.

Run with ``python -m pytest -m slow tests/test_lm_eval_slow.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow
pytest.importorskip("lm_eval")
pytest.importorskip("torch")

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"


def _theirs(model_dir: Path, task: str, limit: int, chat: bool) -> dict[tuple[int, str], dict]:
    """lm-eval's logged samples by (doc id, filter): it logs one row per document and filter."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                          batch_size=8, tasks=[task], limit=limit, apply_chat_template=chat, log_samples=True,
                          task_manager=TaskManager(include_path=str(Path.cwd()), include_defaults=False))
    return {(s["doc_id"], s["filter"]): s for s in out["samples"][task]}


def _ours(model_dir: Path, out: Path, task: str, limit: int, chat: bool) -> dict[int, dict]:
    args = ["run", "--model", f"hf:{model_dir}", "--model-args", "dtype=float32", "--suite", f"lm_eval:{task}",
            "--lm-eval-include", str(Path.cwd()), "--lm-eval-template", "chat" if chat else "raw",
            "--limit", str(limit), "--out", str(out), "--run-id", task]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / task / f"lm_eval:{task}.samples.jsonl").read_text().splitlines()]
    return {r["info"]["doc_id"]: r for r in rows}


def test_bridge_agrees_with_lm_evals_own_hf_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  isolated_caches) -> None:
    from harness.adapters.embedded import ensure_embedded

    model_dir = ensure_embedded("smollm2-135m-instruct")
    shutil.copytree(FIXTURES, tmp_path / "tasks")
    monkeypatch.chdir(tmp_path / "tasks")

    theirs, ours = _theirs(model_dir, "local_mc", 8, chat=False), _ours(model_dir, tmp_path / "runs", "local_mc", 8,
                                                                         chat=False)
    assert {d for d, _ in theirs} == ours.keys() and len(ours) == 8
    for doc_id, mine in ours.items():
        their = theirs[doc_id, "none"]
        their_lls = [r[0][0] for r in their["resps"]]
        my_lls = [c["logprob_sum"] for c in mine["completions"]]
        assert my_lls == pytest.approx(their_lls, abs=1e-4), doc_id
        for metric in ("acc", "acc_norm"):
            assert mine["scores"][metric] == their[metric], (doc_id, metric)

    theirs, ours = _theirs(model_dir, "local_gsm", 3, chat=True), _ours(model_dir, tmp_path / "runs", "local_gsm", 3,
                                                                        chat=True)
    assert {d for d, _ in theirs} == ours.keys() and len(ours) == 3
    for doc_id, mine in ours.items():
        for filter_name in ("strict-match", "flexible-extract"):
            their = theirs[doc_id, filter_name]
            assert mine["completions"][0]["texts"][0] == their["resps"][0][0], doc_id
            assert mine["scores"][f"exact_match:{filter_name}"] == their["exact_match"], (doc_id, filter_name)
            assert mine["extracted"][filter_name] == their["filtered_resps"][0], (doc_id, filter_name)
