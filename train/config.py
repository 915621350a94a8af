"""Training hyperparameters (``[train]`` of a study) and the checks that stop a bad one before any model loads.

``TrainConfig`` holds every stage's hyperparameters, defaulting to Dong et al.
2023 (3 epochs, peak LR 2e-5, 3% warmup, cosine decay, bf16); ``trainer_args``
passes anything else to transformers' ``TrainingArguments`` (fsdp,
deepspeed, optim). A scheduler name transformers does not know, or a
``trainer_args`` key that is not a ``TrainingArguments`` field or that
``[train]`` already sets, would otherwise fail only when the first stage
starts: :func:`check_scheduler` and :func:`check_trainer_args` refuse them
when the study is parsed. Example::

    cfg = TrainConfig(epochs=1, lr=2e-4, lora=LoraOptions(r=8))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.core.errors import UsageError


@dataclass(frozen=True)
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of every stage; defaults are the paper's."""

    epochs: float = 3.0
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    batch_size: int = 4  # per device
    grad_accum: int = 1
    max_length: int = 2048
    packing: bool = False
    lora: LoraOptions | None = None
    dtype: str = "bf16"  # bf16 mixed precision, or fp32
    max_steps: int = -1  # > 0 caps each stage (CPU smoke runs)
    weight_decay: float = 0.0
    seed: int = 1234
    chat_template: str | None = None  # "vicuna", "chatml" or a file path; None = the checkpoint's own
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    trainer_args: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments (fsdp, deepspeed...)

    def identity(self) -> dict[str, Any]:
        """What determines the weights (logging does not)."""
        d = asdict(self)
        d.pop("logging_steps")
        return d


# transformers' SchedulerType values (5.x); a name outside this list is looked up in transformers itself.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay")
# The TrainingArguments we set, and the [train] key that sets each (None: fixed by the harness).
OWN_ARGUMENTS = {"output_dir": None, "per_device_train_batch_size": "batch_size",
                 "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "max_steps": "max_steps",
                 "learning_rate": "lr", "lr_scheduler_type": "scheduler", "warmup_steps": "warmup_ratio",
                 "weight_decay": "weight_decay", "bf16": "dtype", "logging_steps": "logging_steps",
                 "save_strategy": None, "report_to": None, "seed": "seed", "data_seed": "seed", "disable_tqdm": None,
                 "use_cpu": None, "gradient_checkpointing": "gradient_checkpointing",
                 "remove_unused_columns": None, "include_num_input_tokens_seen": None}


def check_scheduler(name: str) -> None:
    """Refuse a scheduler name transformers does not know, before any model loads."""
    if name in SCHEDULERS:
        return
    try:
        from transformers.trainer_utils import SchedulerType
        known = [t.value for t in SchedulerType]
    except ImportError:
        known = list(SCHEDULERS)
    if name not in known:
        raise UsageError(f"[train] scheduler: {name!r} is not a transformers scheduler; choose from: "
                         f"{', '.join(known)}")


def check_trainer_args(args: dict[str, Any]) -> None:
    """``[train.trainer_args]`` keys must be TrainingArguments fields we do not set ourselves."""
    for key in args:
        if key in OWN_ARGUMENTS:
            own = OWN_ARGUMENTS[key]
            raise UsageError(f"[train.trainer_args] {key}: set by [train] itself ({own}); set it there" if own else
                             f"[train.trainer_args] {key}: fixed by the harness; leave it out")
    if not args:
        return
    try:
        from dataclasses import fields as dc_fields

        from transformers import TrainingArguments
    except ImportError:
        return  # training will say it needs the train extra
    known = {f.name for f in dc_fields(TrainingArguments)}
    for key in args:
        if key not in known:
            raise UsageError(f"[train.trainer_args] {key}: not a transformers TrainingArguments field; see "
                             "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments")
