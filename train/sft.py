"""Supervised fine-tuning over a list of stages with transformers' ``Trainer``.

Stage i starts from stage i-1's saved weights (the base model for stage 0)
with a fresh optimizer and schedule, as in Dong et al. 2023 (arXiv
2310.05492): 3 epochs per stage, peak LR 2e-5, 3% warmup, cosine decay, loss
on assistant tokens only. Conversations are rendered with the checkpoint's
chat template (or a named one, ``vicuna`` for base models) and the labels are
masked by us (TRL's ``assistant_only_loss`` needs ``{% generation %}``
markers that most templates, SmolLM2's included, lack).

Hyperparameters live in ``harness.train.config``, chat templates in
``harness.train.templates``, the tiny test model in ``harness.train.tiny``.

Every stage writes a plain HF checkpoint (LoRA merged), loadable by every
adapter, plus ``manifest.json``; a checkpoint directory is named by the hash
of (base fingerprint, hyperparameters, chat template, data hashes of every
stage so far), so identical prefixes of two strategies share checkpoints.

The same code runs under ``torchrun`` / ``accelerate launch`` (DDP, FSDP,
DeepSpeed through ``TrainConfig.trainer_args``; see train/configs/)::

    torchrun --nproc_per_node 8 -m harness.train.study examples/paper_grid.toml --train-only
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import UsageError
from harness.core.records import Message, sha256_json
from harness.train.config import OWN_ARGUMENTS, TrainConfig
from harness.train.data import Conversation
from harness.train.strategies import Stage
from harness.train.templates import template_text

log = logging.getLogger("harness")

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass(frozen=True)
class StageResult:
    path: Path
    manifest: dict[str, Any]
    trained: bool  # False when an existing checkpoint was reused


# -- tokenisation and masking -------------------------------------------------------------------


def _render(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                         tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the loss is taken on.

    An assistant span runs from the end of the generation prompt to the end
    of that turn's rendering, trailing whitespace excluded: the reply and its
    end-of-turn token (``<|im_end|>``, ``</s>``), so the model learns to stop.
    """
    text = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise UsageError("the chat template does not render a conversation's prefixes as prefixes of the "
                             "whole, so assistant tokens cannot be located; pass chat_template = 'chatml' or "
                             "'vicuna' (or a template file)")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def encode(tokenizer: Any, conv: Conversation, max_length: int) -> Encoded:
    """Token ids and labels: prompt tokens are ``-100``, assistant tokens are their own ids.

    With ChatML, for ``[user "hi", assistant "hello"]`` (one token per word)::

        tokens  <|im_start|> user \\n hi <|im_end|> \\n <|im_start|> assistant \\n hello <|im_end|> \\n
        labels  -100         -100 -100 -100 -100 -100 -100        -100      -100 hello <|im_end|> -100

    Labels are not shifted: the model shifts them when computing the loss.
    """
    text, spans = assistant_spans(tokenizer, conv.messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [t if any(s <= start < e for s, e in spans) else IGNORE
              for t, (start, _) in zip(ids, enc["offset_mapping"], strict=True)]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


@dataclass(frozen=True)
class EncodeStats:
    examples: int
    truncated: int
    dropped_no_labels: int
    tokens: int
    label_tokens: int


def encode_all(tokenizer: Any, convs: Sequence[Conversation], max_length: int) -> tuple[list[Encoded], EncodeStats]:
    out, truncated, dropped = [], 0, 0
    for c in convs:
        e = encode(tokenizer, c, max_length)
        truncated += e.truncated
        if all(label == IGNORE for label in e.labels):
            dropped += 1  # truncation cut every assistant token: nothing to learn from
            continue
        out.append(e)
    stats = EncodeStats(len(convs), truncated, dropped, sum(len(e.input_ids) for e in out),
                        sum(sum(label != IGNORE for label in e.labels) for e in out))
    return out, stats


def pack(encoded: Sequence[Encoded], max_length: int) -> list[dict[str, list[int]]]:
    """Concatenate whole examples into rows of at most ``max_length`` tokens.

    ``position_ids`` restart at 0 for every example, so flash-attention's
    varlen path keeps examples apart; with sdpa/eager attention a token can
    attend to the earlier examples of its row (TRL's packing has the same caveat).
    """
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for e in encoded:
        if cur["input_ids"] and len(cur["input_ids"]) + len(e.input_ids) > max_length:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += e.input_ids
        cur["labels"] += e.labels
        cur["position_ids"] += list(range(len(e.input_ids)))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


class Collator:
    """Right-pads a batch; padded label positions are ``-100``.

    >>> Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                     {"input_ids": [8, 9], "labels": [-100, 9]}])
    input_ids      [[5, 6, 7], [8, 9, 0]]
    attention_mask [[1, 1, 1], [1, 1, 0]]
    labels         [[-100, 6, 7], [-100, 9, -100]]
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": self.pad_id, "labels": IGNORE, "attention_mask": 0, "position_ids": 0}
        batch: dict[str, list[list[int]]] = {k: [] for k in fill if k in rows[0] or k == "attention_mask"}
        for r in rows:
            pad = width - len(r["input_ids"])
            r = {**r, "attention_mask": [1] * len(r["input_ids"])}
            for k in batch:
                batch[k].append(list(r[k]) + [fill[k]] * pad)
        return {k: torch.tensor(v) for k, v in batch.items()}


def build_rows(encoded: Sequence[Encoded], cfg: TrainConfig) -> list[dict[str, list[int]]]:
    if cfg.packing:
        return pack(encoded, cfg.max_length)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


# -- training -----------------------------------------------------------------------------------


def _progress_callback(curve: list[dict[str, float]]) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: ``step 120/2000 | loss 1.234 | lr 2.0e-05 | 3.1 s``."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            point = {"step": state.global_step, "loss": float(logs["loss"]),
                     "lr": float(logs.get("learning_rate", 0.0)), "seconds": round(time.monotonic() - self.t0, 3)}
            curve.append(point)
            if state.is_world_process_zero:
                log.info("step %d/%d | loss %.3f | lr %.1e | %.1f s", point["step"], state.max_steps,
                         point["loss"], point["lr"], point["seconds"])

    return Progress()


def load_model(path: str, cfg: TrainConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    template = template_text(cfg.chat_template)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.chat_template is None:
        raise UsageError(f"{path} has no chat template; set chat_template = 'vicuna' (the paper's, for base "
                         "models) or 'chatml' in [train]")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model
        lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules if isinstance(cfg.lora.target_modules, str)
                        else list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
    return model, tokenizer


def training_arguments(cfg: TrainConfig, work_dir: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    ours = {"output_dir": str(work_dir), "per_device_train_batch_size": cfg.batch_size,
            "gradient_accumulation_steps": cfg.grad_accum, "num_train_epochs": cfg.epochs,
            "max_steps": cfg.max_steps, "learning_rate": cfg.lr, "lr_scheduler_type": cfg.scheduler,
            "warmup_steps": cfg.warmup_ratio, "weight_decay": cfg.weight_decay, "bf16": cfg.dtype == "bf16",
            "logging_steps": cfg.logging_steps, "save_strategy": "no", "report_to": "none", "seed": cfg.seed,
            "data_seed": cfg.seed, "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(),
            "gradient_checkpointing": cfg.gradient_checkpointing, "remove_unused_columns": False,
            "include_num_input_tokens_seen": "non_padding"}
    assert set(ours) == set(OWN_ARGUMENTS)  # the table check_trainer_args refuses must be exactly what we set
    return TrainingArguments(**ours, **cfg.trainer_args)


def fit(model: Any, tokenizer: Any, rows: list[dict[str, list[int]]], cfg: TrainConfig,
        work_dir: Path, callbacks: Sequence[Any] = ()) -> tuple[Any, list[dict[str, float]], Any]:
    """Train one stage; return (trainer, loss curve, final state)."""
    from transformers import PrinterCallback, Trainer

    curve: list[dict[str, float]] = []
    trainer = Trainer(model=model, args=training_arguments(cfg, work_dir), train_dataset=rows,
                      data_collator=Collator(tokenizer.pad_token_id),
                      callbacks=[_progress_callback(curve), *callbacks])
    trainer.remove_callback(PrinterCallback)  # our progress line replaces its raw dicts
    trainer.train()
    return trainer, curve, trainer.state


def save_checkpoint(trainer: Any, tokenizer: Any, out: Path, lora: bool) -> None:
    """A plain HF checkpoint: LoRA merged into the weights, tokenizer (with template) beside it."""
    if lora:
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(out, safe_serialization=True)
    else:
        trainer.save_model(str(out))  # gathers FSDP/DeepSpeed shards; writes on the main process
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        (out / "training_args.bin").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()


def stage_identity(base_fingerprint: str, cfg: TrainConfig, stages: Sequence[Stage], index: int) -> str:
    return sha256_json({"base": base_fingerprint, "train": cfg.identity(),
                        "template": template_text(cfg.chat_template),
                        "stages": [s.sha256 for s in stages[: index + 1]]})


def reusable(path: Path, identity: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("identity") == identity else None


@dataclass(frozen=True)
class BaseModel:
    path: str  # local directory
    fingerprint: dict[str, str]


def train_stages(stages: Sequence[Stage], cfg: TrainConfig, base: BaseModel, root: Path,
                 meta: dict[str, Any]) -> list[StageResult]:
    """Train every stage not already on disk; return one result per stage, in order."""
    results: list[StageResult] = []
    init = base.path
    for i, stage in enumerate(stages):
        identity = stage_identity(base.fingerprint["fingerprint"], cfg, stages, i)
        path = root / identity[:16]
        manifest = reusable(path, identity)
        if manifest is None:
            manifest = train_one(stage, cfg, init, path, {
                **meta, "identity": identity, "stage_index": i, "n_stages": len(stages),
                "data_sha256": [s.sha256 for s in stages[: i + 1]], "base_model": asdict(base), "init_from": init})
            results.append(StageResult(path, manifest, trained=True))
        else:
            log.info("stage %d/%d %s: reusing %s", i + 1, len(stages), stage.name, path)
            results.append(StageResult(path, manifest, trained=False))
        init = str(path)
    return results


def train_one(stage: Stage, cfg: TrainConfig, init: str, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from harness.core.files import write_json_atomic

    t0 = time.monotonic()
    model, tokenizer = load_model(init, cfg)
    encoded, stats = encode_all(tokenizer, stage.examples, cfg.max_length)
    if not encoded:
        raise UsageError(f"stage {stage.name!r} has no trainable examples (every one empty or truncated away)")
    rows = build_rows(encoded, cfg)
    log.info("stage %d/%d %s: %d examples (%s), %d truncated, %d dropped, %d rows", meta["stage_index"] + 1,
             meta["n_stages"], stage.name, len(stage.examples), stage.counts(), stats.truncated,
             stats.dropped_no_labels, len(rows))
    trainer, curve, state = fit(model, tokenizer, rows, cfg, out.parent / f".work-{out.name}")
    save_checkpoint(trainer, tokenizer, out, cfg.lora is not None)
    if trainer.is_world_process_zero():
        shutil.rmtree(out.parent / f".work-{out.name}", ignore_errors=True)
    manifest = {**meta, "stage": stage.name, "counts": stage.counts(), "stage_sha256": stage.sha256,
                "hyperparameters": asdict(cfg), "encoding": asdict(stats), "rows": len(rows),
                "world_size": trainer.args.world_size, "steps": state.global_step,
                "tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0),
                "loss_curve": curve, "train_seconds": round(time.monotonic() - t0, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if trainer.is_world_process_zero():
        write_json_atomic(out / "manifest.json", manifest)  # written last: its presence marks a finished stage
    trainer.accelerator.wait_for_everyone()
    log.info("stage %s: %d steps, final loss %s (%.1f s) -> %s", stage.name, state.global_step,
             f"{curve[-1]['loss']:.3f}" if curve else "n/a", time.monotonic() - t0, out)
    return manifest


