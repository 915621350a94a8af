"""Representation analysis, piece by piece: pooling, the separation numbers, the maps, bad input.

* HF ``embed`` equals a hand computation from ``output_hidden_states`` (mean
  and last-token pooling, a middle layer, truncation), whatever the batching.
* The three numbers order clustered vectors above uniform ones, and a paired
  comparison of the two finds the difference on the same samples.
* t-SNE is deterministic for a seed; the vectors' journal form round trips
  exactly (so a resumed run reads the numbers a fresh one computed).
* An OpenAI-compatible or vLLM model is refused before any work; a layer the
  model does not have is one line naming the range.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.core import separation as sep
from harness.core.errors import UsageError
from harness.core.models import ModelSpec
from harness.core.records import EmbedRequest, EmbedResult

TEXTS = ["Natalia sold clips to 48 of her friends in April.", "def add(a, b):\n    return a + b\n",
         "Write a haiku about autumn leaves falling.", "x"]


@pytest.fixture(scope="module")
def adapter(tiny_llama):
    pytest.importorskip("torch")
    from harness.adapters.hf import HFAdapter

    # CPU and fp32 whatever the machine: the hand computation below runs the same model on CPU tensors
    args = {"batch_size": 3, "device": "cpu", "dtype": "float32"}
    return HFAdapter(ModelSpec("hf", str(tiny_llama), args=args), str(tiny_llama), needs_chat=False)


def hand_vector(adapter, text: str, layer: int, pooling: str, max_tokens: int = 512) -> np.ndarray:
    import torch

    ids = adapter.tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    with torch.no_grad():
        out = adapter.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    states = out.hidden_states[layer][0].float()
    return (states.mean(dim=0) if pooling == "mean" else states[-1]).numpy()


@pytest.mark.parametrize(("layer", "pooling"), [(-1, "mean"), (-1, "last"), (1, "mean"), (0, "last")])
def test_embed_equals_a_hand_computation_from_output_hidden_states(adapter, layer: int, pooling: str) -> None:
    reqs = [EmbedRequest(id=f"r{i}", text=t, layer=layer, pooling=pooling) for i, t in enumerate(TEXTS)]
    got = adapter.embed(reqs)  # batch 3 of 4 texts of different lengths: left padding in play
    assert [r.id for r in got] == ["r0", "r1", "r2", "r3"]
    for req, res in zip(reqs, got, strict=True):
        assert res.error is None and not res.truncated
        vec = np.frombuffer(res.vector, dtype="<f4")
        assert vec.shape == (adapter.model.config.hidden_size,)
        np.testing.assert_allclose(vec, hand_vector(adapter, req.text, layer, pooling), rtol=1e-4, atol=1e-5)


def test_embed_truncates_to_max_tokens_and_says_so(adapter) -> None:
    (res,) = adapter.embed([EmbedRequest(id="long", text=TEXTS[0], max_tokens=4)])
    assert res.truncated and res.n_tokens == 4
    np.testing.assert_allclose(np.frombuffer(res.vector, dtype="<f4"), hand_vector(adapter, TEXTS[0], -1, "mean", 4),
                               rtol=1e-4, atol=1e-5)


def test_a_layer_the_model_lacks_is_refused_naming_the_range(adapter) -> None:
    layers = adapter.model.config.num_hidden_layers
    with pytest.raises(UsageError, match=rf"--representations-layer {layers + 1} is outside .* 0 \(embeddings\) "
                                         rf"\.\. {layers} \(last\)"):
        adapter.embed([EmbedRequest(id="a", text="hi", layer=layers + 1)])


def test_vectors_round_trip_through_the_journal_form_exactly() -> None:
    vec = np.array([1.5, -2.25, 3.1415927, 1e-30], dtype="<f4")
    res = EmbedResult(id="a", vector=vec.tobytes(), n_tokens=7, truncated=True)
    back = EmbedResult.from_dict(res.to_dict())
    assert back == res and res.to_dict()["dim"] == 4
    assert EmbedResult.from_dict(EmbedResult(id="b", error="out of memory").to_dict()).vector is None


def test_request_key_changes_with_what_determines_the_vector() -> None:
    base = EmbedRequest(id="a", text="t")
    assert base.key() == EmbedRequest(id="other", text="t").key()  # the id never enters the key
    assert len({base.key(), EmbedRequest(id="a", text="t", layer=2).key(),
                EmbedRequest(id="a", text="t", pooling="last").key(),
                EmbedRequest(id="a", text="t", max_tokens=8).key()}) == 4


# -- the numbers ----------------------------------------------------------------------------------

def synthetic(clustered: bool, n: int = 40, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [a for a in ("math", "code", "general") for _ in range(n)]
    shift = np.repeat(np.eye(dim)[:3] * 5.0, n, axis=0) if clustered else 0.0
    return rng.normal(size=(3 * n, dim)) + shift + 2.0, labels


def test_separation_numbers_order_clustered_above_uniform() -> None:
    got = {}
    for clustered in (True, False):
        x, labels = synthetic(clustered)
        got[clustered] = sep.with_intervals(x, labels, sep.item_scores(x, labels), resamples=300)
    c, u = got[True], got[False]
    assert c["silhouette"]["value"] > 0.3 > 0.05 > u["silhouette"]["value"]
    assert c["knn_accuracy"]["value"] > 0.95 and u["knn_accuracy"]["value"] < 0.6
    assert c["centroid_cosine"]["value"] < u["centroid_cosine"]["value"]
    for values in (c, u):
        for name in ("silhouette", "knn_accuracy"):  # means of per-sample values: the estimate is inside
            assert values[name]["ci_low"] <= values[name]["value"] <= values[name]["ci_high"]
    # The centroid cosine of a sample is biased low (noisy centroids); the basic interval corrects for it and
    # covers the true value: equal means (uniform) give 1; shifts 5 e_i on a common 2 give 148/173.
    assert u["centroid_cosine"]["ci_low"] <= 1.0 <= u["centroid_cosine"]["ci_high"]
    assert c["centroid_cosine"]["ci_low"] <= 148 / 173 <= c["centroid_cosine"]["ci_high"]
    assert c["silhouette"]["ci_low"] > u["silhouette"]["ci_high"]


def test_paired_comparison_on_the_same_samples_finds_the_collapse() -> None:
    xc, labels = synthetic(True)
    xu, _ = synthetic(False)
    d = sep.paired_deltas(sep.Side(xu, sep.item_scores(xu, labels)), sep.Side(xc, sep.item_scores(xc, labels)),
                          labels, resamples=300)
    assert d["silhouette"]["ci_high"] < 0 and d["knn_accuracy"]["ci_high"] < 0 and d["silhouette"]["p_value"] < 0.01
    assert d["centroid_cosine"]["ci_low"] > 0
    same = sep.paired_deltas(sep.Side(xc, sep.item_scores(xc, labels)), sep.Side(xc, sep.item_scores(xc, labels)),
                             labels, resamples=300)
    assert all(v["delta"] == 0 and v["p_value"] == 1.0 for v in same.values())


def test_centroid_cosine_by_hand() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert sep.centroid_cosine(x, ["a", "a", "b", "b"]) == pytest.approx(0.0)
    assert sep.centroid_cosine(x + [5.0, 5.0], ["a", "a", "b", "b"]) == pytest.approx(60 / 61)


def test_tsne_is_deterministic_for_a_seed_and_pca_needs_none() -> None:
    x, _ = synthetic(True, n=12)
    a, b = sep.tsne_2d(x, seed=7, perplexity=5.0), sep.tsne_2d(x, seed=7, perplexity=5.0)
    assert a.shape == (36, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sep.pca_2d(x), sep.pca_2d(x.copy()))
    assert sep.effective_perplexity(30.0, 36) == pytest.approx(35 / 3)


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "extra", "words"), [
    ("openai:some-model", ["--base-url", "http://127.0.0.1:9/v1"], "OpenAI-compatible endpoint does not return"),
    ("vllm:TINY", [], "vLLM's generation engine"),
])
def test_engines_without_hidden_states_are_refused_before_any_work(model, extra, words, tmp_path, capsys,
                                                                   monkeypatch, tiny_llama) -> None:
    from harness.cli import main
    from harness.run import runner

    model = model.replace("TINY", str(tiny_llama))

    monkeypatch.setattr(runner, "connect_adapter", lambda *a, **k: pytest.fail("connected to a model"))
    code = main(["run", "--model", model, *extra, "--suite", "representations", "--limit", "2",
                 "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and "--model hf:PATH" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_general_file_without_user_turns_is_one_line(tmp_path) -> None:
    from harness.tasks.representations import RepresentationOptions, Representations

    path = tmp_path / "general.jsonl"
    path.write_text('{"messages": [{"role": "assistant", "content": "hello"}]}\n')
    task = Representations(RepresentationOptions(general_data=str(path)))
    with pytest.raises(UsageError, match="holds 0 conversation"):
        task.load(2)


def test_without_scikit_learn_the_suite_stops_before_the_model_with_the_extra_to_install(monkeypatch) -> None:
    import sys

    from harness.tasks.representations import Representations

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(UsageError, match=r"needs scikit-learn: pip install 'sft-harness\[repr\]'"):
        Representations().load(2)
