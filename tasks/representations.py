"""Representation analysis: how separable a checkpoint keeps math, code and general samples.

Dong et al. (2023, Sec. 5) visualise the hidden states of math, code and
general samples with t-SNE and describe a "collapse" of LLaMA-13B's
representations, with and without DMT. This task makes that picture
measurable and comparable between checkpoints (docs/representations.md):

* samples: the first N (``--representations-per-ability``, default 200;
  ``--limit`` caps it per ability) of each ability: GSM8K test questions
  (math), HumanEval prompts (code, all 164 at most) and general requests: the
  first user turn of each conversation in ``--representations-general-data``
  (ShareGPT, messages or Alpaca), or, without a file, MT-Bench's turn-1
  questions outside math, coding and reasoning (50 packaged; the run log and
  config.json say which).
* one vector per sample: the text, raw (no chat template, so base and chat
  checkpoints read the same tokens and no shared template dilutes the mean),
  through the model; a layer's hidden state (default the last) mean-pooled
  over the tokens, or the last token's (``--representations-pooling last``).
  Requests are ``EmbedRequest`` through the runner's journaled pass
  (``representations.embeddings.jsonl``, vectors as base64 float32), so a
  killed run resumes and ``harness score`` re-analyses offline.
* numbers (``harness.core.separation``): silhouette of the ability labels
  (primary), 5-fold k-NN ability accuracy and the mean cosine between ability
  centroids, each with a stratified bootstrap interval. Per sample the
  silhouette value and the k-NN outcome are scores, so ``harness report``
  pairs checkpoints sample by sample.
* ``representations.vectors.npz`` in the run directory: sample ids,
  abilities, vectors, the 2-D t-SNE (seed and perplexity recorded) and PCA
  maps, so every number and picture can be redrawn offline.

Example: ``harness run --model smollm2-135m-instruct --suite representations --limit 100``
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.core.errors import UsageError
from harness.core.options import Options, SharedOptions, option
from harness.core.records import EmbedRequest, EmbedResult, Example, MetricSpec, Pooling, Result

log = logging.getLogger("harness")

VECTORS_FILE = "representations.vectors.npz"
ABILITIES = ("math", "code", "general")
# MT-Bench categories that are neither math nor code (reasoning is close to math): the packaged general set
GENERAL_CATEGORIES = ("writing", "roleplay", "extraction", "stem", "humanities")

METRICS = (
    MetricSpec("silhouette", key="silhouette", kind="continuous", scale=1.0, primary=True, unit="sample"),
    MetricSpec("knn_accuracy", key="knn", kind="binary", scale=100.0, unit="sample"),
)

Format = Literal["auto", "sharegpt", "messages", "alpaca"]


@dataclass(frozen=True)
class RepresentationOptions(Options):
    prefix = "representations"

    per_ability: int = option(200, "samples per ability (math, code, general); --limit caps it", low=2)
    general_data: str | None = option(None, "conversation file for the general ability (ShareGPT, messages or "
                                      "Alpaca json/jsonl/parquet; its first user turns); default: MT-Bench's "
                                      "writing/roleplay/extraction/stem/humanities questions")
    general_format: Format = option("auto", "format of --representations-general-data (auto: from its keys)")
    layer: int = option(-1, "hidden-state index to pool: 0 = embeddings, -1 = last layer (HF's "
                        "output_hidden_states numbering)")
    pooling: Pooling = option("mean", "mean over the text's tokens, or the last token's state")
    max_tokens: int = option(512, "tokens of each text that are embedded (longer texts are cut, and counted)", low=1)
    perplexity: float = option(30.0, "t-SNE perplexity (capped at (n - 1) / 3)", low=1.0)


class Representations:
    """Silhouette, k-NN accuracy and centroid cosine of math/code/general hidden states; t-SNE maps."""

    name = "representations"
    version = "1"
    turns = 1
    request_kind = "embed"  # the runner sends EmbedRequests through its embedding pass
    Options: type[Options] = RepresentationOptions
    needs_chat = False
    needs_judge = False
    needs_code_execution = False
    default_max_drop = 0.05  # silhouette units the gate lets fall before it tests for a change
    in_suite_all = False  # an analysis, not a benchmark: --suite representations
    metrics = METRICS

    def __init__(self, options: Options | None = None, shared: SharedOptions | None = None) -> None:
        self.options: RepresentationOptions = options or RepresentationOptions()  # type: ignore[assignment]
        self.shared = shared or SharedOptions()
        self._sources: dict[str, str] = {}
        self._data_sha256: str | None = None
        self._analysis: dict[str, Any] = {}

    # -- data -------------------------------------------------------------------------------------

    def load(self, limit: int | None = None) -> list[Example]:
        from harness.core.separation import require_sklearn

        require_sklearn()  # before any model is loaded
        n = min(self.options.per_ability, limit) if limit else self.options.per_ability
        rows = {"math": _math_texts(), "code": _code_texts(), "general": self._general_texts()}
        self._data_sha256 = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        examples = []
        for ability, texts in rows.items():
            for i, text in enumerate(texts[:n]):
                examples.append(Example(id=f"{ability}/{i}", data={"ability": ability, "text": text}))
            if len(texts) < n:
                log.info("representations: %s has %d samples (fewer than the %d asked)", ability, len(texts), n)
        return examples

    def _general_texts(self) -> list[str]:
        path = self.options.general_data
        if not path:
            self._sources = {**_PACKAGED, "general": "packaged:mt_bench turn 1 (" + ", ".join(GENERAL_CATEGORIES)
                             + ")"}
            log.info("representations: no --representations-general-data given; the general ability is MT-Bench's "
                     "%s questions (turn 1)", "/".join(GENERAL_CATEGORIES))
            from harness.tasks.mt_bench import load_data

            return [q["turns"][0] for q in load_data().questions if q["category"] in GENERAL_CATEGORIES]
        self._sources = {**_PACKAGED, "general": f"{path} (first user turns)"}
        return _first_user_turns(path, self.options.general_format)

    # -- requests and scoring -----------------------------------------------------------------------

    def requests(self, examples: Sequence[Example], turn: int,
                 prior: Mapping[str, Sequence[Any]]) -> list[EmbedRequest]:
        o = self.options
        return [EmbedRequest(id=ex.id, text=ex.data["text"], layer=o.layer, pooling=o.pooling,
                             max_tokens=o.max_tokens) for ex in examples]

    def score(self, examples: Sequence[Example], completions: Mapping[str, Sequence[EmbedResult]],
              ctx: Any) -> list[Result]:
        import numpy as np

        from harness.core import separation as sep

        got = {ex.id: completions[ex.id][0] for ex in examples}
        good = [ex for ex in examples if got[ex.id].error is None and got[ex.id].vector is not None]
        labels = [ex.data["ability"] for ex in good]
        counts = {a: labels.count(a) for a in dict.fromkeys(ex.data["ability"] for ex in examples)}
        if sum(c >= 2 for c in counts.values()) < 2 or min(counts.values()) < 2:
            why = f"too few embedded samples to measure separation ({counts}; need 2+ per ability)"
            return [_failed(ex, got[ex.id].error or why) for ex in examples]
        x = np.stack([np.frombuffer(got[ex.id].vector, dtype="<f4") for ex in good])
        scores = sep.item_scores(x, labels, self.shared.seed)
        self._analysis = self._analyse(x, labels, scores, [ex.id for ex in good], Path(ctx.run_dir))
        by_id = {ex.id: j for j, ex in enumerate(good)}
        out = []
        for ex in examples:
            res, j = got[ex.id], by_id.get(ex.id)
            if j is None:
                out.append(_failed(ex, res.error or "no vector"))
                continue
            out.append(Result(id=ex.id, scores={"silhouette": float(scores.silhouette[j]),
                                                "knn": float(scores.knn_correct[j])},
                              info={"ability": ex.data["ability"], "n_tokens": res.n_tokens,
                                    "truncated": res.truncated}))
        return out

    def _analyse(self, x: Any, labels: list[str], scores: Any, ids: list[str], run_dir: Path) -> dict[str, Any]:
        """Numbers with intervals, the 2-D maps, and the npz that lets all of it be redrawn."""
        from harness.core import separation as sep

        values = sep.with_intervals(x, labels, scores)
        perplexity = sep.effective_perplexity(self.options.perplexity, len(labels))
        tsne = sep.tsne_2d(x, self.shared.seed, perplexity)
        pca = sep.pca_2d(x)
        # Settings under "group/name" keys: recorded with the numbers, not shown as coverage counts
        extra = {"tsne/seed": self.shared.seed, "tsne/perplexity": perplexity, "knn/folds": scores.folds,
                 "knn/neighbours": sep.NEIGHBOURS, "bootstrap/resamples": sep.RESAMPLES}
        _write_npz(run_dir / VECTORS_FILE, ids=ids, abilities=labels, vectors=x, silhouette=scores.silhouette,
                   knn_correct=scores.knn_correct, tsne=tsne, pca=pca,
                   meta=json.dumps({**extra, "layer": self.options.layer, "pooling": self.options.pooling,
                                    "numbers": values}))
        return sep.summary_record(values, extra)

    def aggregate(self, results: Sequence[Result]) -> dict[str, float]:
        scored = [r for r in results if r.error is None]
        out: dict[str, Any] = {"scored": len(scored), "errors": len(results) - len(scored),
                               "truncated": sum(1 for r in scored if r.info.get("truncated"))}
        for ability in ABILITIES:
            out[f"n/{ability}"] = sum(1 for r in scored if r.info.get("ability") == ability)
        return {**self._analysis, **out}

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"request_kind": self.request_kind, "layer": o.layer, "pooling": o.pooling,
                "per_ability": o.per_ability, "max_tokens": o.max_tokens, "perplexity": o.perplexity,
                "text": "raw (no chat template)", "sources": self._sources, "data_sha256": self._data_sha256,
                "vectors": VECTORS_FILE}


_PACKAGED = {"math": "packaged:gsm8k/test questions", "code": "packaged:humaneval prompts"}


def _failed(ex: Example, error: str) -> Result:
    return Result(id=ex.id, error=error, info={"ability": ex.data["ability"]})


def _math_texts() -> list[str]:
    from harness.tasks.gsm8k import load_rows

    return [r["question"] for r in load_rows(None, "test")]


def _code_texts() -> list[str]:
    from harness.tasks.humaneval import load_problems

    return [p["prompt"] for p in load_problems()]


def _first_user_turns(path: str, fmt: str) -> list[str]:
    from harness.core.conversations import convert, read_records
    from harness.tasks.probes import detect_format

    records = read_records(path)
    if fmt == "auto":
        try:
            fmt = detect_format(records, path)
        except UsageError as exc:  # worded for probe_general's flags
            raise UsageError(str(exc).replace("--probe-general", "--representations-general")) from None
    convs, _dropped = convert(records, fmt, "representations")
    texts = [next((m.content for m in c.messages if m.role == "user" and m.content.strip()), "") for c in convs]
    texts = [t for t in texts if t]
    if len(texts) < 2:
        raise UsageError(f"--representations-general-data {path!r} holds {len(texts)} conversation(s) with a user "
                         f"turn (read as {fmt}); pass a file of at least two chats")
    return texts


def _write_npz(path: Path, **arrays: Any) -> None:
    """Written beside the journals, atomically (a killed analysis leaves the previous file whole)."""
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
