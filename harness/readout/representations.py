"""The report's representation section: the three separation numbers per checkpoint, paired
differences between checkpoints, and the t-SNE / PCA maps as small multiples.

Reads ``representations.vectors.npz`` (written by ``tasks/representations.py``)
from each run directory, nothing else, so the section is redrawn offline.
Differences: every run against the baseline (``--baseline``), or against the
first run with vectors when none is given, on the samples both embedded, with
the paired stratified bootstrap of ``harness.core.separation`` (the same
resampled samples for both checkpoints). When the two runs embedded different
samples, the per-sample scores are recomputed on the shared ones first.

The picture (``representations-maps.png``): one column per run, t-SNE on top
(seed and perplexity in the title) and PCA below, points coloured by ability,
as Dong et al. (2023) draw math, code and general samples.

Example: ``harness report runs/base runs/sft --baseline runs/base --format md,html --out reports/repr``
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.readout.compare import Run
from harness.readout.tables import md_code, md_table

log = logging.getLogger("harness")
MAPS_PNG = "representations-maps.png"
VECTORS_FILE = "representations.vectors.npz"  # tasks/representations.py writes it
COLOURS = {"math": "C0", "code": "C1", "general": "C2"}
LABELS = {"silhouette": "silhouette", "knn_accuracy": "k-NN accuracy %", "centroid_cosine": "centroid cosine"}


@dataclass(frozen=True)
class Vectors:
    """One run's npz, as arrays."""

    ids: tuple[str, ...]
    abilities: tuple[str, ...]
    x: np.ndarray
    silhouette: np.ndarray
    knn_correct: np.ndarray
    tsne: np.ndarray
    pca: np.ndarray
    meta: dict[str, Any]


def load_vectors(run: Run) -> Vectors | None:
    path = Path(run.path) / VECTORS_FILE
    if "representations" not in run.tasks or not path.is_file():
        return None
    return _load(str(path), path.stat().st_mtime_ns)


@cache
def _load(path: str, _mtime: int) -> Vectors:  # the mtime keys the cache: a re-scored run is read again
    with np.load(path) as d:
        return Vectors(ids=tuple(str(i) for i in d["ids"]), abilities=tuple(str(a) for a in d["abilities"]),
                       x=d["vectors"].astype(np.float64), silhouette=d["silhouette"], knn_correct=d["knn_correct"],
                       tsne=d["tsne"], pca=d["pca"], meta=json.loads(str(d["meta"])))


def _with_vectors(report: Any) -> list[tuple[Run, Vectors]]:
    out = []
    for run in report.runs:
        v = load_vectors(run)
        if v is not None:
            out.append((run, v))
    return out


# -- numbers --------------------------------------------------------------------------------------

def _fmt(name: str, v: float) -> str:
    scale = 100.0 if name == "knn_accuracy" else 1.0
    return f"{v * scale:.1f}" if scale == 100 else f"{v:.3f}"


def run_rows(report: Any) -> list[list[str]]:
    """One row per run: each number ``value [low, high]``, samples per ability, layer and pooling."""
    rows = []
    for run, v in _with_vectors(report):
        cells = [run.label]
        for name in LABELS:
            n = v.meta["numbers"][name]
            cells.append(f"{_fmt(name, n['value'])} [{_fmt(name, n['ci_low'])}, {_fmt(name, n['ci_high'])}]")
        counts = {a: v.abilities.count(a) for a in dict.fromkeys(v.abilities)}
        cells.append(" · ".join(f"{a} {c}" for a, c in counts.items()))
        cells.append(f"layer {v.meta['layer']}, {v.meta['pooling']} pooling")
        rows.append(cells)
    return rows


def _reference(report: Any, found: list[tuple[Run, Vectors]]) -> tuple[Run, Vectors] | None:
    if report.baseline is not None:
        v = load_vectors(report.baseline)
        return (report.baseline, v) if v is not None else None
    return found[0] if len(found) > 1 else None


def comparison_rows(report: Any) -> tuple[str | None, list[list[str]]]:
    """``run - reference`` for each number with its paired 95% interval and p, on the shared samples."""
    found = _with_vectors(report)
    ref = _reference(report, found)
    if ref is None:
        return None, []
    rows = []
    for run, v in found:
        if run.path == ref[0].path:
            continue
        deltas, shared = paired(v, ref[1])
        if deltas is None:
            rows.append([run.label, *(["n/a"] * len(LABELS)), f"{shared} shared samples: too few to pair"])
            continue
        cells = [run.label]
        for name in LABELS:
            d = deltas[name]
            cells.append(f"{_signed(name, d['delta'])} [{_signed(name, d['ci_low'])}, {_signed(name, d['ci_high'])}]"
                         f" p={_p(d['p_value'])}")
        rows.append([*cells, f"{shared} paired samples"])
    return ref[0].label, rows


def paired(new: Vectors, base: Vectors) -> tuple[dict[str, dict[str, float]] | None, int]:
    from harness.core import separation as sep

    where = {i: j for j, i in enumerate(base.ids)}
    shared = [(j, where[i]) for j, i in enumerate(new.ids)
              if i in where and new.abilities[j] == base.abilities[where[i]]]
    labels = [new.abilities[j] for j, _ in shared]
    counts = [labels.count(a) for a in set(labels)]
    if len(counts) < 2 or min(counts) < 2:
        return None, len(shared)
    jn, jb = [j for j, _ in shared], [k for _, k in shared]
    same = len(shared) == len(new.ids) == len(base.ids)

    def side(v: Vectors, idx: list[int]) -> sep.Side:
        x = v.x[idx]
        if same:
            return sep.Side(x, sep.ItemScores(v.silhouette[idx], v.knn_correct[idx], int(v.meta["knn/folds"])))
        return sep.Side(x, sep.item_scores(x, labels, int(v.meta["tsne/seed"])))

    return sep.paired_deltas(side(new, jn), side(base, jb), labels), len(shared)


def _signed(name: str, v: float) -> str:
    text = _fmt(name, v)
    return text if text.startswith("-") else f"+{text}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


HEAD = ["run", *LABELS.values(), "samples", "vectors"]
LEGEND = ("Separation of the abilities in the checkpoint's hidden states (docs/representations.md): silhouette of "
          "the ability labels (cosine; 1 apart, 0 overlapping), 5-fold 5-NN ability accuracy in the original space "
          "(chance about 1/abilities), mean cosine between ability centroids (near 1: the abilities' mean "
          "representations point the same way). value [95% CI], stratified bootstrap over samples.")


def markdown_lines(report: Any) -> list[str]:
    """The section for the markdown report (empty when no run has representation vectors)."""
    rows = run_rows(report)
    if not rows:
        return []
    parts = ["", "## Representations", "", md_table(HEAD, rows), "", LEGEND]
    ref, comp = comparison_rows(report)
    if comp:
        parts += ["", f"Paired against {md_code(ref or '')} (same samples; Δ [95% CI] p, paired stratified "
                  "bootstrap):", "", md_table(["run", *(f"Δ {h}" for h in LABELS.values()), "paired"], comp)]
    if MAPS_PNG in report.plots:
        parts += ["", f"The maps, one column per run: {MAPS_PNG} (under Plots)."]
    return parts


def html_parts(report: Any) -> list[str]:
    rows = run_rows(report)
    if not rows:
        return []
    parts = ["<h2>Representations</h2>", _html_table(HEAD, rows), f"<p class='legend'>{html.escape(LEGEND)}</p>"]
    ref, comp = comparison_rows(report)
    if comp:
        parts += [f"<p>Paired against <code>{html.escape(ref or '')}</code> (same samples):</p>",
                  _html_table(["run", *(f"Δ {h}" for h in LABELS.values()), "paired"], comp)]
    return parts


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# -- the picture -----------------------------------------------------------------------------------

def write_maps(report: Any, out: Path) -> list[str]:
    """``representations-maps.png`` in ``out`` when some run has vectors; its name, or nothing."""
    found = _with_vectors(report)
    if not found:
        return []
    try:
        import matplotlib
    except ImportError:
        log.warning("representation maps skipped: matplotlib is not installed (pip install 'sft-harness[report]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(found)
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols + 0.4, 7.2), squeeze=False)
    for c, (run, v) in enumerate(found):
        _panel(axes[0][c], v, v.tsne, f"{run.label}\nt-SNE (seed {v.meta['tsne/seed']}, "
                                         f"perplexity {v.meta['tsne/perplexity']:.3g})")
        _panel(axes[1][c], v, v.pca, f"PCA · silhouette {v.meta['numbers']['silhouette']['value']:.3f}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("Representations by ability (one column per run)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(Path(out) / MAPS_PNG, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [MAPS_PNG]


def _panel(ax: Any, v: Vectors, xy: np.ndarray, title: str) -> None:
    abilities = np.asarray(v.abilities)
    for i, a in enumerate(dict.fromkeys(v.abilities)):
        pts = xy[abilities == a]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.7, color=COLOURS.get(a, f"C{3 + i}"), label=a)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if not all(math.isfinite(float(t)) for t in xy.ravel()):
        ax.text(0.5, 0.5, "non-finite coordinates", transform=ax.transAxes, ha="center")
