"""--suite representations end to end on tiny random Llamas: run, kill and resume, offline re-scoring,
and a two-checkpoint report with paired numbers and the small multiples (markdown and HTML)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def only_run(out: Path) -> Path:
    (rd,) = [d for d in out.iterdir() if d.is_dir()]
    return rd


def test_representations_run_resume_rescore_and_report(tiny_llama: Path, tmp_path: Path, monkeypatch,
                                                       isolated_caches) -> None:
    from conftest import build_tiny_llama

    from harness.adapters.hf import HFAdapter

    model_a = tmp_path / "a"
    shutil.copytree(tiny_llama, model_a)
    model_b = build_tiny_llama(tmp_path / "b", seed=1)
    real = HFAdapter.embed
    sent: list[str] = []
    kill_after = [5]

    def counted(self, requests, on_result=None):
        sent.extend(r.id for r in requests)

        landed: list[int] = []

        def callback(i, res):
            on_result(i, res)
            landed.append(i)
            if len(landed) == kill_after[0]:
                raise KeyboardInterrupt  # killed mid-pass, five vectors journaled
        return real(self, requests, callback if on_result else None)

    monkeypatch.setattr(HFAdapter, "embed", counted)
    out_a, out_b = tmp_path / "runs_a", tmp_path / "runs_b"
    args = ["run", "--model", f"hf:{model_a}", "--suite", "representations", "--limit", "4", "--out", str(out_a),
            "--model-args", "batch_size=2"]
    assert main(args) == 130
    kill_after[0], sent[:] = 0, []
    assert main(args) == 0
    assert len(sent) == 12 - 5  # 3 abilities x 4 samples; the 5 journaled before the kill are not sent again
    rd = only_run(out_a)

    with np.load(rd / "representations.vectors.npz") as d:
        assert sorted(str(i) for i in d["ids"]) == sorted(f"{a}/{i}" for a in ("math", "code", "general")
                                                          for i in range(4))
        assert d["vectors"].shape == (12, 128) and d["tsne"].shape == (12, 2) and d["pca"].shape == (12, 2)
        assert json.loads(str(d["meta"]))["tsne/perplexity"] == pytest.approx(11 / 3)
    summary = json.loads((rd / "summary.json").read_text())["tasks"]["representations"]
    m = summary["metrics"]
    assert summary["n"] == 12 and summary["errors"] == 0
    for name in ("silhouette", "knn_accuracy", "centroid_cosine"):
        assert m[f"{name}_ci_low"] <= m[f"{name}_ci_high"]
    assert (m["n/math"], m["n/code"], m["n/general"]) == (4, 4, 4)
    own = (rd / "report.md").read_text()
    assert "## Representations" in own and "representations-maps.png" in own
    assert (rd / "representations-maps.png").stat().st_size > 1000

    before = (rd / "summary.json").read_bytes()
    assert main(["score", str(rd)]) == 0  # offline: same vectors, same seed, same numbers
    assert (rd / "summary.json").read_bytes() == before

    assert main(["run", "--model", f"hf:{model_b}", "--suite", "representations", "--limit", "4",
                 "--out", str(out_b)]) == 0
    rep = tmp_path / "report"
    assert main(["report", str(rd), str(only_run(out_b)), "--baseline", str(rd), "--format", "md,html",
                 "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    section = md[md.index("## Representations"):]
    assert "Paired against" in section and "12 paired samples" in section
    assert section.count("layer -1, mean pooling") == 2
    html = (rep / "report.html").read_text()
    assert "<h2>Representations</h2>" in html and "alt='representations-maps.png'" in html
