"""The HTML report and its plots; opened in a real headless Chromium when one is installed.

CI: `apt-get install -y chromium` (Debian) and run `pytest -m slow`.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile

import pytest
from test_report_synth import MT_SPECS, binary_scores, make_run

from harness.core.records import MetricSpec
from harness.readout.report import write_report

pytest.importorskip("matplotlib")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
HE_SPEC = (MetricSpec("pass@1", "pass@1", "binary", 100.0, primary=True),)


def _study(tmp_path):
    """A multi-task reference run and DMT runs over k, with three abilities."""
    rng = random.Random(0)

    def run(name, p, mt, meta):
        tasks = {"gsm8k": {"scores": binary_scores([int(rng.random() < p) for _ in range(100)])},
                 "humaneval": {"scores": {f"h{i}": {"pass@1": float(rng.random() < p / 2)} for i in range(40)},
                               "specs": HE_SPEC, "extra": {"timeouts": 1, "sandbox_violations": 0}},
                 "mt_bench": {"scores": {f"m{i}": {"score": min(10.0, max(1.0, rng.gauss(mt, 1.5)))}
                                         for i in range(20)}, "specs": MT_SPECS}}
        return make_run(tmp_path, name, tasks, metadata=meta)

    runs = [run("multi-task", 0.3, 5.7, {"strategy": "multi-task"})]
    runs += [run(f"dmt-k{k:g}", p, mt, {"strategy": "dmt", "k": k})
             for k, p, mt in [(1, 0.4, 5.5), (1 / 16, 0.5, 6.0), (1 / 256, 0.45, 6.1), (0, 0.3, 6.0)]]
    return runs


def test_html_report_has_table_and_embedded_plots(tmp_path):
    runs = _study(tmp_path)
    out = tmp_path / "report"
    write_report(runs, out, baseline=runs[0], formats=("md", "html"))
    for name in ("bars.png", "composition-k.png", "abilities.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 2 and "dmt-k0.0625" in page
    assert page.count("src='data:image/png;base64,") == 3
    assert "class='better'" in page  # a significant improvement is tinted
    assert "![composition-k.png](composition-k.png)" in (out / "report.md").read_text()


def test_no_composition_plot_without_k_or_fraction(tmp_path):
    a = make_run(tmp_path, "a", {"gsm8k": {"scores": binary_scores([1, 0, 1, 1])}})
    b = make_run(tmp_path, "b", {"gsm8k": {"scores": binary_scores([0, 0, 1, 1])}})
    write_report([a, b], tmp_path / "r", formats=("md",))
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["abilities.png", "bars.png"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install -y chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image

    runs = _study(tmp_path)
    out = tmp_path / "report"
    write_report(runs, out, baseline=runs[0], formats=("html",))
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,1800",
                        (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]  # floats in [0, 1]

    def count(rgb: tuple[int, int, int]) -> int:
        return int((abs(pixels - [c / 255 for c in rgb]).max(axis=-1) < 0.03).sum())

    assert count((0xE3, 0xF6, 0xE3)) > 500  # the tinted (significant) table cells
    assert count((0xF3, 0xF3, 0xF3)) > 2000  # the table header row
    assert count((0x1F, 0x77, 0xB4)) > 2000  # matplotlib's first colour: the bars plot was decoded and drawn


def test_one_composition_plot_per_parameter(tmp_path):
    runs = [make_run(tmp_path, name, {"gsm8k": {"scores": binary_scores(scores)}}, metadata=meta)
            for name, scores, meta in [("mt", [1, 1, 0, 0], {"strategy": "multi-task"}),
                                       ("dmt0", [1, 0, 0, 0], {"strategy": "dmt", "k": 0}),
                                       ("dmt1", [1, 1, 1, 0], {"strategy": "dmt", "k": 1}),
                                       ("half", [0, 1, 0, 0], {"strategy": "single", "source": "math",
                                                               "fraction": 0.5})]]
    write_report(runs, tmp_path / "r", formats=("md",))
    assert sorted(p.name for p in (tmp_path / "r").glob("composition-*.png")) == ["composition-fraction.png",
                                                                                 "composition-k.png"]
