"""How separable are abilities in a checkpoint's representations: three numbers and two maps.

Dong et al. (2023, "How Abilities in Large Language Models are Affected by
Supervised Fine-tuning Data Composition", Sec. 5) draw a t-SNE of math, code
and general samples' hidden states and describe how far they "collapse"
together. A picture cannot be compared between checkpoints; these numbers can
(``docs/representations.md``):

* ``silhouette``: mean silhouette of the ability labels under cosine distance
  (per item ``(b - a) / max(a, b)``; a = mean distance to its own ability,
  b = to the nearest other ability). 1: tight, apart; 0: overlapping.
* ``knn_accuracy``: share of items whose ability a k-NN classifier (k = 5,
  cosine) predicts from the other folds (stratified 5-fold, in the original
  space, not the 2-D map). Chance is about 1 / number of abilities.
* ``centroid_cosine``: mean cosine between the ability centroids (raw, not
  centred: centring 3 equal groups forces about -0.5). Near 1: the abilities'
  mean representations point the same way.

Intervals: a bootstrap over samples, stratified by ability (each resample
keeps every ability's count), 95% basic (pivotal) interval ``2*est - q``:
resampled centroids are noisier than the full set's, so their cosine is
biased low and a percentile interval can miss the estimate itself (seen on
uniform vectors); the basic interval corrects that shift. The per-item silhouette values
and k-NN outcomes are resampled as computed on the full set; the centroids are
recomputed from the resampled vectors. Two checkpoints embedded on the same
samples are compared with the same resampled indices for both (paired).

The maps: 2-D t-SNE (scikit-learn, cosine, PCA init, fixed seed, perplexity
recorded) and a 2-D PCA as the deterministic companion. scikit-learn is the
``[repr]`` extra and imported only here, when representations are analysed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.errors import UsageError

RESAMPLES = 1000
SEED = 20231009
NEIGHBOURS = 5
FOLDS = 5
NUMBERS = ("silhouette", "knn_accuracy", "centroid_cosine")


def require_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UsageError("--suite representations needs scikit-learn: pip install 'sft-harness[repr]'") from None


@dataclass(frozen=True)
class ItemScores:
    """Per-item values whose mean is a number (same order as the vectors)."""

    silhouette: np.ndarray
    knn_correct: np.ndarray
    folds: int


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def item_scores(x: np.ndarray, labels: Sequence[str], seed: int = SEED) -> ItemScores:
    """Each item's silhouette (cosine) and whether 5-NN from the other folds gets its ability right."""
    from sklearn.metrics import silhouette_samples
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels)
    counts = [int((y == a).sum()) for a in np.unique(y)]
    if len(counts) < 2 or min(counts) < 2:
        raise ValueError(f"need at least two abilities with two items each, got counts {counts}")
    xn = normalise(np.asarray(x, dtype=np.float64))
    dist = np.clip(1.0 - xn @ xn.T, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    sil = silhouette_samples(dist, y, metric="precomputed")
    folds = min(FOLDS, min(counts))
    correct = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed % 2**32).split(xn, y):
        knn = KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, len(train)), metric="cosine", algorithm="brute")
        correct[test] = knn.fit(xn[train], y[train]).predict(xn[test]) == y[test]
    return ItemScores(silhouette=sil, knn_correct=correct, folds=folds)


def centroid_cosine(x: np.ndarray, labels: Sequence[str]) -> float:
    y = np.asarray(labels)
    cents = normalise(np.stack([np.asarray(x, dtype=np.float64)[y == a].mean(axis=0) for a in np.unique(y)]))
    sims = cents @ cents.T
    upper = np.triu_indices(len(cents), k=1)
    return float(sims[upper].mean())


def resample_weights(labels: Sequence[str], resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` counts: how often each item is drawn, drawing each ability's items from itself."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    w = np.zeros((resamples, len(y)))
    rows = np.arange(resamples)[:, None]
    for a in np.unique(y):
        members = np.flatnonzero(y == a)
        picks = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        np.add.at(w, (np.broadcast_to(rows, picks.shape), picks), 1.0)
    return w


def resampled_numbers(x: np.ndarray, labels: Sequence[str], scores: ItemScores, w: np.ndarray) -> np.ndarray:
    """``(resamples, 3)``: silhouette, k-NN accuracy and centroid cosine of each resample ``w``."""
    y = np.asarray(labels)
    n = len(y)
    sil = w @ scores.silhouette / n
    knn = w @ scores.knn_correct / n
    cents = []
    for a in np.unique(y):
        wa = w * (y == a)
        cents.append(normalise(wa @ np.asarray(x, dtype=np.float64) / wa.sum(axis=1, keepdims=True)))
    cents_arr = np.stack(cents, axis=1)  # (resamples, abilities, dim)
    sims = np.einsum("rad,rbd->rab", cents_arr, cents_arr)
    upper = np.triu_indices(cents_arr.shape[1], k=1)
    cos = sims[:, upper[0], upper[1]].mean(axis=1)
    return np.stack([sil, knn, cos], axis=1)


def numbers(x: np.ndarray, labels: Sequence[str], scores: ItemScores) -> dict[str, float]:
    return {"silhouette": float(scores.silhouette.mean()), "knn_accuracy": float(scores.knn_correct.mean()),
            "centroid_cosine": centroid_cosine(x, labels)}


def with_intervals(x: np.ndarray, labels: Sequence[str], scores: ItemScores,
                   resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, dict[str, float]]:
    """Each number with its stratified bootstrap 95% interval: ``{name: {value, ci_low, ci_high}}``."""
    point = numbers(x, labels, scores)
    boot = resampled_numbers(x, labels, scores, resample_weights(labels, resamples, seed))
    out = {}
    for j, name in enumerate(NUMBERS):
        low, high = _basic(point[name], boot[:, j])
        lo_bound = 0.0 if name == "knn_accuracy" else -1.0
        out[name] = {"value": point[name], "ci_low": max(lo_bound, low), "ci_high": min(1.0, high)}
    return out


def _basic(estimate: float, boot: np.ndarray) -> tuple[float, float]:
    """The basic bootstrap 95% interval: the resamples' spread around the estimate, mirrored."""
    q_low, q_high = np.percentile(boot, [2.5, 97.5])
    return float(2 * estimate - q_high), float(2 * estimate - q_low)


@dataclass(frozen=True)
class Side:
    """One checkpoint's vectors and item scores, on samples in a shared order."""

    x: np.ndarray
    scores: ItemScores


def paired_deltas(new: Side, base: Side, labels: Sequence[str], resamples: int = RESAMPLES,
                  seed: int = SEED) -> dict[str, dict[str, float]]:
    """``new - base`` for each number with a paired bootstrap 95% basic interval (the same resampled
    samples for both) and a two-sided bootstrap p-value for no change (never below 1 / (resamples + 1))."""
    w = resample_weights(labels, resamples, seed)
    diff = resampled_numbers(new.x, labels, new.scores, w) - resampled_numbers(base.x, labels, base.scores, w)
    point_new, point_base = numbers(new.x, labels, new.scores), numbers(base.x, labels, base.scores)
    out = {}
    for j, name in enumerate(NUMBERS):
        delta = point_new[name] - point_base[name]
        low, high = _basic(delta, diff[:, j])
        # Two-sided: how often the resampled deltas stray from the estimate by at least |delta|.
        p = float((np.abs(diff[:, j] - delta) >= abs(delta)).mean()) if delta != 0 else 1.0
        out[name] = {"delta": delta, "ci_low": low, "ci_high": high, "p_value": max(p, 1.0 / (resamples + 1))}
    return out


def tsne_2d(x: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    """2-D t-SNE (cosine, PCA init): deterministic for a seed on one machine and library version."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed % 2**32,
                max_iter=1000).fit_transform(np.asarray(x, dtype=np.float64))


def effective_perplexity(requested: float, n: int) -> float:
    """t-SNE needs perplexity < n; below that, the common rule of thumb (n - 1) / 3 caps it."""
    return float(max(1.0, min(requested, (n - 1) / 3)))


def pca_2d(x: np.ndarray) -> np.ndarray:
    """2-D PCA (SVD of the centred vectors, sign fixed so the largest loading is positive)."""
    c = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return c @ (comps * signs[:, None]).T


def summary_record(values: dict[str, dict[str, float]], extra: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics for summary.json: ``name``, ``name_ci_low``, ``name_ci_high`` plus ``extra``."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = v["value"], v["ci_low"], v["ci_high"]
    return {**out, **extra}
