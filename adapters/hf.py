"""HF transformers adapter: batched generation, the fallback engine.

Requests are grouped by generation settings and sorted by prompt length so
each left-padded batch wastes little; completions come back in request
order. Chat prompts are rendered with the checkpoint's own chat template
(``tokenizer.apply_chat_template``), never one guessed from the model name.

Sampling honours each request's seed independently of how requests are
batched: instead of HF's single global RNG, a logits processor draws every
row's token from a generator seeded by (request seed, sample index) and hands
greedy search a one-hot distribution. Stop strings end a row early
(``stop_strings``) and are cut from the returned text, as vLLM does. Generated
ids are decoded together with the prompt's (``adapters/tokens.py``), so a
SentencePiece tokenizer keeps a completion's leading space.

``loglikelihood`` scores continuations (lm-eval's request type): context and
continuation tokenised together and split at the boundary
(``adapters/tokens.py``), batches sorted by length, one forward pass each.

``embed`` returns one vector per text: a layer's hidden state
(``output_hidden_states``) mean-pooled over the text's tokens, or the last
token's, for representation analysis (``tasks/representations.py``).

Generation batches (``adapters/hf_batching.py``): ``batch_size=auto`` (the
default) sizes them once per pass from the memory left for the pass's longest
prompt + max_tokens, and finished rows are replaced by waiting ones between
decode steps (refill), so a batch never idles behind its longest row; the
choice is recorded in ``describe()["generation_batches"]``.

Options (``--model-args``): dtype (auto|float32|bfloat16|float16; auto is
float32 on CPU, bfloat16 on CUDA), device (auto|cpu|cuda), batch_size
(auto, or N: N rows per generation batch; log-likelihood and embedding
batches are N, or 8 on CPU and 32 on CUDA under auto), lora=PATH (a peft
adapter), revision, trust_remote_code.

Example: ``harness run --model hf:/path/to/ckpt --model-args dtype=float32,batch_size=8 --suite gsm8k``
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from harness.adapters._batch import parse_batch_size
from harness.adapters._template import resolve_chat_template
from harness.adapters.hf_batching import (
    DecodeSettings,
    RefillDecoder,
    Row,
    choose_batch_size,
    refill_supported,
    takes_logits_to_keep,
    verify_on_cuda,
)
from harness.adapters.hf_scoring import score_shared, shared_context_groups
from harness.adapters.tokens import ScoringInput, decode_continuation, encode_all, require_template_for_chat
from harness.core.errors import UsageError
from harness.core.models import ModelSpec, fingerprint_checkpoint, is_local_path, text_sha256
from harness.core.records import (
    Completion,
    EmbedRequest,
    EmbedResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    OnEmbed,
    OnResult,
    OnScore,
    Request,
)

log = logging.getLogger("harness")

_KNOWN_ARGS = {"dtype", "device", "batch_size", "lora", "revision", "trust_remote_code"}


class SeededSampler(LogitsProcessor):
    """Per-row sampling with per-row generators; returns a one-hot score so
    greedy search takes exactly the sampled token."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device) -> None:
        self.generators = [seeded_generator(s, device) for s in seeds]  # the refill loop sets them per step
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(dim=-1) - sorted_p > self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        out = torch.full_like(scores, float("-inf"))
        for row, gen in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=gen)
            out[row, token] = 0.0
        return out


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _sample_seed(seed: int | None, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class HFAdapter:
    name = "hf"

    def __init__(self, spec: ModelSpec, target: str, chat_template: str | None = None, needs_chat: bool = True) -> None:
        unknown = set(spec.args) - _KNOWN_ARGS
        if unknown:
            raise UsageError(f"unknown --model-args for hf: {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(_KNOWN_ARGS))}")
        self.spec, self.target = spec, target
        self.device = torch.device(_pick_device(spec.args.get("device", "auto")))
        self.dtype = _pick_dtype(spec.args.get("dtype", "auto"), self.device)
        # None: sized per generation pass (hf_batching); scoring and embedding batches keep a fixed size.
        self.generation_batch = parse_batch_size(spec.args.get("batch_size", "auto"))
        self.batch_size = self.generation_batch or (8 if self.device.type == "cpu" else 32)
        self.batch_choices: list[dict[str, Any]] = []  # one per generation pass, for describe()
        self.decode_kernels: dict[str, str] | None = None  # CPU kernels of the last refill pass, for describe()
        kwargs = {"revision": spec.args.get("revision"), "trust_remote_code": bool(spec.args.get("trust_remote_code"))}
        self.tokenizer = _load(AutoTokenizer.from_pretrained, target, "tokenizer", **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat_template = resolve_chat_template(self.tokenizer, chat_template, target, needs_chat)
        self.model = _load(AutoModelForCausalLM.from_pretrained, target, "model", dtype=self.dtype, **kwargs)
        if spec.args.get("lora"):
            self.model = _apply_lora(self.model, str(spec.args["lora"]))
        self.model.to(self.device).eval()
        self._fingerprint = _fingerprint(target, self.model)
        self.refill = refill_supported(self.model)

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "target": self.target, **self._fingerprint,
                "chat_template_sha256": text_sha256(self.chat_template), "dtype": str(self.dtype).removeprefix("torch."),
                "device": self.device.type, "lora": self.spec.args.get("lora"),
                "lora_fingerprint": (fingerprint_checkpoint(Path(self.spec.args["lora"]))["fingerprint"]
                                     if self.spec.args.get("lora") else None),
                "generation_batches": {"batch_size": self.generation_batch or "auto", "refill": self.refill,
                                       "passes": list(self.batch_choices), "decode_kernels": self.decode_kernels}}

    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)

        def done(i: int, comp: Completion) -> None:
            out[i] = comp
            if on_result is not None:
                on_result(i, comp)

        prompts = [self._prompt_ids(r) for r in requests]
        rows = self._rows_per_batch(requests, prompts)
        for idx in self._groups(requests, prompts):
            if self.refill:
                self._generate_refill(requests, prompts, idx, rows, done)
                continue
            per_batch = max(1, rows // max(1, requests[idx[0]].n))
            for s in range(0, len(idx), per_batch):
                batch = idx[s:s + per_batch]
                for i, comp in zip(batch, self._generate_batch([requests[i] for i in batch]), strict=True):
                    done(i, comp)
        return [c for c in out if c is not None]

    def _prompt_ids(self, request: Request) -> list[int]:
        return self.tokenizer(self.render(request), add_special_tokens=request.prompt is not None)["input_ids"]

    def _groups(self, requests: Sequence[Request], prompts: list[list[int]]) -> list[list[int]]:
        """Request indices with equal settings, longest prompts first (length buckets)."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            sampled = r.temperature > 0
            key = (r.max_tokens, r.stop, sampled, r.temperature if sampled else 0.0, r.top_p if sampled else 1.0)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            idx.sort(key=lambda i: -len(prompts[i]))
        return list(groups.values())

    def _rows_per_batch(self, requests: Sequence[Request], prompts: list[list[int]]) -> int:
        """The explicit batch_size, else one automatic choice for the whole pass (recorded)."""
        if self.generation_batch is not None or not requests:
            return self.generation_batch or 1
        longest = max(len(p) + r.max_tokens for p, r in zip(prompts, requests, strict=True))
        choice = choose_batch_size(self.model.config, self.dtype, self.device, rows=sum(r.n for r in requests),
                                   longest=longest)
        if self.device.type == "cuda":
            choice = verify_on_cuda(self.model, choice, self.tokenizer.pad_token_id)
        self.batch_choices.append(choice.record())
        log.info("hf: batch size %d for %d rows of up to %d tokens (%.1f MiB each, %d MiB free for them)",
                 choice.batch_size, choice.rows, longest, choice.bytes_per_row / 2**20, choice.budget_bytes // 2**20)
        return choice.batch_size

    def _generate_refill(self, requests: Sequence[Request], prompts: list[list[int]], idx: list[int], rows: int,
                         done: OnResult) -> None:
        """One settings group through the refilling decode loop; a request completes with its last row."""
        first = requests[idx[0]]
        sampler = (SeededSampler([], first.temperature, first.top_p, self.device) if first.temperature > 0 else None)
        work = [Row(i, j, prompts[i], seeded_generator(_sample_seed(requests[i].seed, j), self.device)
                    if sampler is not None else None) for i in idx for j in range(requests[i].n)]
        pending: dict[int, list[Row]] = {i: [] for i in idx}
        for w in work:
            pending[w.request].append(w)
        settings = DecodeSettings(first.max_tokens, frozenset(self._eos_ids()), self.tokenizer.pad_token_id,
                                  first.stop, sampler)

        def row_done(row: Row) -> None:
            mine = pending[row.request]
            if all(w.done for w in mine):
                done(row.request, self._completion(requests[row.request], mine))

        decoder = RefillDecoder(self.model, self.tokenizer, rows, settings)
        decoder.run(work, row_done)
        self.decode_kernels = decoder.kernels

    def _completion(self, request: Request, rows: list[Row]) -> Completion:
        errors = [w.error for w in rows if w.error]
        if errors:
            return Completion(id=request.id, error=errors[0])
        finished = [self._finish(w.tokens, w.prompt, request.stop) for w in rows]
        return Completion(id=request.id, texts=tuple(f[0] for f in finished), prompt_tokens=len(rows[0].prompt),
                          completion_tokens=sum(f[2] for f in finished), finish_reasons=tuple(f[1] for f in finished))

    @torch.inference_mode()
    def _generate_batch(self, batch: list[Request]) -> list[Completion]:
        first = batch[0]
        prompts = [self.render(r) for r in batch for _ in range(r.n)]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True,
                             add_special_tokens=first.prompt is not None).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": first.max_tokens, "do_sample": False,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if first.temperature > 0:
            seeds = [_sample_seed(r.seed, j) for r in batch for j in range(r.n)]
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(seeds, first.temperature, first.top_p,
                                                                            self.device)])
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
        try:
            gen = self.model.generate(**enc, **kwargs, temperature=None, top_p=None, top_k=None)
        except torch.OutOfMemoryError as exc:
            return [Completion(id=r.id, error=f"out of memory: {exc}".splitlines()[0]) for r in batch]
        width = enc["input_ids"].shape[1]
        prompts_ids = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"],
                                                                      strict=True)]
        texts, finish, n_tokens = self._decode(gen[:, width:], prompts_ids, batch)
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results, row = [], 0
        for r in batch:
            results.append(Completion(id=r.id, texts=tuple(texts[row:row + r.n]), prompt_tokens=int(prompt_tokens[row]),
                                      completion_tokens=sum(n_tokens[row:row + r.n]),
                                      finish_reasons=tuple(finish[row:row + r.n])))
            row += r.n
        return results

    def _decode(self, new: torch.Tensor, prompts_ids: list[list[int]],
                batch: list[Request]) -> tuple[list[str], list[str], list[int]]:
        finished = [self._finish(ids, prompt_ids, batch[0].stop)
                    for ids, prompt_ids in zip(new.tolist(), prompts_ids, strict=True)]
        return [f[0] for f in finished], [f[1] for f in finished], [f[2] for f in finished]

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return {t for t in set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
                if t is not None}

    def _finish(self, ids: list[int], prompt_ids: list[int], stops: tuple[str, ...]) -> tuple[str, str, int]:
        """(text, finish reason, tokens generated) of one row: cut at its first EOS, then its first stop string."""
        eos_ids = self._eos_ids()
        cut = next((k for k, t in enumerate(ids) if t in eos_ids), None)
        kept = ids if cut is None else ids[:cut]
        # Decoded after the prompt: Metaspace tokenizers strip a leading space from a lone decode.
        text = decode_continuation(self.tokenizer, prompt_ids, kept)
        reason = "stop" if cut is not None else "length"
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            text, reason = text[:min(hits)], "stop"
        return text, reason, len(kept) + (1 if cut is not None else 0)

    # -- log-likelihood ------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      on_result: OnScore | None = None) -> list[LoglikelihoodResult]:
        """Sum of log-probabilities of each continuation, longest inputs first in
        batches of ``batch_size``; log-softmax in fp32 whatever the model's dtype."""
        require_template_for_chat(self.tokenizer, requests, self.target)
        max_len = getattr(self.model.config, "max_position_embeddings", None)
        out, encoded = encode_all(self.tokenizer, requests, max_len, on_result)
        # a plain DynamicCache (what the refill loop needs) is what the continuations extend
        groups, rest = shared_context_groups(encoded) if self.refill else ([], list(encoded))
        for group in groups:  # options of one question, a judge prompt's ratings: the context runs once
            _land(group, self._score_shared([requests[i].id for i in group], [encoded[i] for i in group]),
                  out, on_result)
        order = sorted(rest, key=lambda i: -len(encoded[i].ids))
        return self._in_batches(order, lambda idx: self._score_batch(
            [requests[i].id for i in idx], [encoded[i] for i in idx]), out, on_result)

    def _score_shared(self, ids: list[str], inputs: list[ScoringInput]) -> list[LoglikelihoodResult]:
        try:
            scored = score_shared(self.model, inputs, self.batch_size, self.device, self.tokenizer.pad_token_id)
        except torch.OutOfMemoryError as exc:
            return [LoglikelihoodResult(id=i, error=f"out of memory: {exc}".splitlines()[0]) for i in ids]
        return [LoglikelihoodResult(id=i, logprob_sum=total, n_tokens=len(x.ids) - x.start, n_bytes=x.n_bytes,
                                    is_greedy=greedy) for i, x, (total, greedy) in zip(ids, inputs, scored, strict=True)]

    def _in_batches(self, order: list[int], run: Any, out: list[Any], on_result: Any) -> list[Any]:
        """Scoring and embedding passes: ``order`` (longest first) in batches of ``batch_size``; each
        result lands in ``out`` at its request's index and is reported as soon as its batch is done."""
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            _land(idx, run(idx), out, on_result)
        return [r for r in out if r is not None]

    @torch.inference_mode()
    def _score_batch(self, ids: list[str], inputs: list[ScoringInput]) -> list[LoglikelihoodResult]:
        # Left-padded with explicit positions, so every row's continuation ends at the last
        # column and only the last ``keep`` logits are needed (the vocabulary dominates memory).
        width = max(len(x.ids) for x in inputs)
        tokens = torch.full((len(inputs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, x in enumerate(inputs):
            tokens[row, width - len(x.ids):] = torch.tensor(x.ids)
            mask[row, width - len(x.ids):] = 1
        keep = max(len(x.ids) - x.start for x in inputs) + 1
        kwargs: dict[str, Any] = {"input_ids": tokens.to(self.device), "attention_mask": mask.to(self.device),
                                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)}
        if takes_logits_to_keep(self.model):
            kwargs["logits_to_keep"] = keep
        try:
            logits = self.model(**kwargs).logits[:, -keep:]
        except torch.OutOfMemoryError as exc:
            return [LoglikelihoodResult(id=i, error=f"out of memory: {exc}".splitlines()[0]) for i in ids]
        results = []
        for row, (rid, x) in enumerate(zip(ids, inputs, strict=True)):
            n = len(x.ids) - x.start
            scores = logits[row, keep - n - 1:keep - 1].float()
            target = torch.tensor(x.ids[x.start:], device=scores.device)
            logprobs = torch.log_softmax(scores, dim=-1).gather(-1, target[:, None]).squeeze(-1)
            results.append(LoglikelihoodResult(id=rid, logprob_sum=float(logprobs.double().sum()), n_tokens=n,
                                               n_bytes=x.n_bytes, is_greedy=bool((scores.argmax(-1) == target).all())))
        return results

    # -- hidden-state vectors ----------------------------------------------------------------------

    def embed(self, requests: Sequence[EmbedRequest], on_result: OnEmbed | None = None) -> list[EmbedResult]:
        """One pooled hidden-state vector per text (float32), longest texts first in batches."""
        layers = int(getattr(self.model.config, "num_hidden_layers", 0))
        bad = sorted({r.layer for r in requests if not -(layers + 1) <= r.layer <= layers})
        if bad:
            raise UsageError(f"--representations-layer {bad[0]} is outside this model's hidden states: "
                             f"0 (embeddings) .. {layers} (last), or -1 .. -{layers + 1} counted from the end")
        encoded = [self.tokenizer(r.text, add_special_tokens=True)["input_ids"] for r in requests]
        out: list[EmbedResult | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -min(len(encoded[i]), requests[i].max_tokens))
        return self._in_batches(order, lambda idx: self._embed_batch(
            [requests[i] for i in idx], [encoded[i] for i in idx]), out, on_result)

    @torch.inference_mode()
    def _embed_batch(self, batch: list[EmbedRequest], encoded: list[list[int]]) -> list[EmbedResult]:
        ids = [e[:r.max_tokens] for r, e in zip(batch, encoded, strict=True)]
        width = max(len(x) for x in ids)
        # Left-padded with explicit positions (as _score_batch): every row's last token is the last column.
        tokens = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            tokens[row, width - len(x):] = torch.tensor(x)
            mask[row, width - len(x):] = 1
        kwargs: dict[str, Any] = {"input_ids": tokens.to(self.device), "attention_mask": mask.to(self.device),
                                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
                                  "output_hidden_states": True}
        if takes_logits_to_keep(self.model):
            kwargs["logits_to_keep"] = 1  # only the hidden states are wanted; skip the vocabulary projection
        try:
            hidden = self.model(**kwargs).hidden_states
        except torch.OutOfMemoryError as exc:
            return [EmbedResult(id=r.id, error=f"out of memory: {exc}".splitlines()[0]) for r in batch]
        results = []
        for row, (r, x, full) in enumerate(zip(batch, ids, encoded, strict=True)):
            states = hidden[r.layer][row, width - len(x):].float()
            vec = states.mean(dim=0) if r.pooling == "mean" else states[-1]
            results.append(EmbedResult(id=r.id, vector=vec.cpu().numpy().astype("<f4").tobytes(), n_tokens=len(x),
                                       truncated=len(full) > len(x)))
        return results

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _land(idx: Sequence[int], results: Sequence[Any], out: list[Any], on_result: Any) -> None:
    """Each result into ``out`` at its request's index, reported as it lands."""
    for i, res in zip(idx, results, strict=True):
        out[i] = res
        if on_result is not None:
            on_result(i, res)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--model-args device={device} but no CUDA device is available; use device=cpu")
    return device


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # fp32 on CPU: bf16 is slower on CPUs without AVX512-BF16.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UsageError(f"--model-args dtype={name!r} is not one of auto, float32, bfloat16, float16")
    return table[name]


def _load(fn: Any, target: str, what: str, **kwargs: Any) -> Any:
    try:
        return fn(target, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "local checkpoint" if is_local_path(target) else "hub model (the hub may be unreachable)"
        raise UsageError(f"cannot load the {what} of {where} {target!r}: {first[:300]}") from None


def _apply_lora(model: Any, path: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError:
        raise UsageError("--model-args lora=PATH needs peft: pip install peft") from None
    return PeftModel.from_pretrained(model, path).merge_and_unload()


def _fingerprint(target: str, model: Any) -> dict[str, str]:
    if is_local_path(target):
        return fingerprint_checkpoint(Path(target).expanduser())
    commit = getattr(model.config, "_commit_hash", None)
    return {"fingerprint": f"hub:{target}@{commit}", "weights_sha256": "", "tokenizer_sha256": ""}
