"""The bridge between lm-evaluation-harness' objects and our records (used by ``tasks/lm_eval.py``).

lm-eval is imported only here and only when an lm_eval suite runs (a missing
package is a one-line install hint). What lives here: loading lm-eval's task
objects offline-first with one-line errors, the overrides its
``simple_evaluate`` applies (gen_kwargs, num_fewshot, few-shot seed), the chat
hook that records messages instead of rendering them, and the mapping of each
``Instance`` to our ``Request`` / ``LoglikelihoodRequest`` and of our results
back to the ``resps`` lm-eval's filters and ``process_results`` read:

* ``generate_until(context, gen_kwargs)`` -> ``Request`` (``until`` -> stop,
  ``max_gen_toks`` -> max_tokens, ``do_sample``/``temperature``/``top_p``,
  ``repeats`` -> n); the response is the generated text(s);
* ``loglikelihood(context, continuation)`` (and ``multiple_choice``) ->
  ``LoglikelihoodRequest``; the response is ``(logprob_sum, is_greedy)``;
* ``loglikelihood_rolling(text)`` -> ``LoglikelihoodRequest`` with an empty
  context (scored after BOS, lm-eval's prefix token; no windowing: a text
  longer than the model's context is a per-item error); the response is the sum.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

from harness.core.errors import UsageError
from harness.core.records import (
    Completion,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    Request,
)

BRIDGE_VERSION = "1"  # bump when the mapping of requests or results changes
INSTALL_HINT = 'lm_eval suites need lm-evaluation-harness: pip install "sft-harness[lmeval]"'
CHAT_MARK = "\x00sft-harness-chat\x00"  # what our chat hook returns in place of a rendered string
# Metrics whose per-item value is 0/1 (Wilson interval, McNemar); other mean metrics are continuous.
BINARY = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "acc_all", "pass@1"})
KINDS = {"generate_until": "generate", "loglikelihood": "loglikelihood", "multiple_choice": "loglikelihood",
         "loglikelihood_rolling": "loglikelihood"}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


def parse_gen_kwargs(text: str | None, flag: str = "--lm-eval-gen-kwargs") -> dict[str, Any]:
    """``temperature=0,max_gen_toks=64`` -> a dict, numbers and booleans as lm-eval parses them."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {text!r}: write key=value pairs separated by commas (max_gen_toks=64)")
        out[key.strip()] = _typed(value.strip())
    return out


def _typed(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_metadata(text: str | None, flag: str = "--lm-eval-metadata") -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{flag} is not JSON ({exc}); pass an object, e.g. '{{\"max_seq_lengths\": [4096]}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


# -- lm-eval's objects (imported only here, when an lm_eval suite runs) --------------------------------

def import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return lm_eval


@cache
def task_manager(include: str | None, metadata: str | None, defaults: bool = True) -> Any:
    """lm-eval's task index, one per include path; ``defaults``: lm-eval's own ~200 task folders too
    (indexing those takes seconds, so a task found in the include path alone is loaded without them)."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults, metadata=parse_metadata(metadata) or None)


def load_leaves(name: str, options: Any) -> dict[str, Any]:
    """lm-eval's leaf Task objects of ``name`` (a task, group or tag), data loaded; one-line errors."""
    if options.include is not None:
        from pathlib import Path
        if not Path(options.include).exists():
            raise UsageError(f"--lm-eval-include {options.include!r} does not exist; pass a folder of task YAML files")
        local = task_manager(options.include, options.metadata, False)
        if name in local.all_tasks:
            try:
                return _load(local, name)
            except _NotInIndex:
                pass  # a local group of built-in tasks, say: try again with lm-eval's own tasks indexed
    return _load(task_manager(options.include, options.metadata), name)


class _NotInIndex(UsageError):
    """The task (or one a group names) is not in the index: worth retrying with lm-eval's own tasks."""


def _load(manager: Any, name: str) -> dict[str, Any]:
    if name not in manager.all_tasks:
        near = sorted(t for t in manager.all_tasks if name.lower() in t.lower())[:8]
        hint = f" (similar: {', '.join(near)})" if near else ""
        raise _NotInIndex(f"lm_eval:{name} is not an lm-eval task or group{hint}; for a local YAML file pass "
                         "--lm-eval-include FOLDER")
    try:
        leaves = manager.load([name])["tasks"]
    except Exception as exc:  # datasets' many error types: offline hub, missing file, bad config
        detail = " ".join(str(exc).split())[:200]
        data = isinstance(exc, OSError | ConnectionError)  # a missing file or an unreachable hub
        raise (UsageError if data else _NotInIndex)(f"lm_eval:{name}: its data cannot be loaded ({type(exc).__name__}: {detail}); set the "
                         "task's dataset_path: json (or parquet) with dataset_kwargs.data_files pointing at local "
                         "files (docs/lm-eval.md), or make the hub reachable") from None
    if not leaves:
        raise UsageError(f"lm_eval:{name} holds no task to run")
    return leaves


def configure(leaf: Any, options: Any) -> None:
    """The overrides lm-eval's simple_evaluate applies: gen_kwargs, num_fewshot, the few-shot seed."""
    if leaf.get_config("output_type") == "generate_until" and options.gen_kwargs:
        leaf.set_config(key="generation_kwargs", value=parse_gen_kwargs(options.gen_kwargs), update=True)
    if options.num_fewshot is not None and leaf.get_config("num_fewshot") != 0:
        leaf.set_config(key="num_fewshot", value=options.num_fewshot)
    elif leaf.get_config("num_fewshot") is None:
        leaf.set_config(key="num_fewshot", value=0)
    leaf.set_fewshot_seed(seed=options.fewshot_seed)


def record_chat(chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """lm-eval's ``apply_chat_template`` hook: the messages, kept for our adapter to render."""
    return CHAT_MARK + json.dumps({"messages": chat_history, "add_generation_prompt": add_generation_prompt},
                                  sort_keys=True, ensure_ascii=False)


def context_of(text: str, where: str) -> str | tuple[Message, ...]:
    """A recorded chat (``record_chat``) as messages, anything else as the raw string it is."""
    if not text.startswith(CHAT_MARK):
        return text
    chat = json.loads(text[len(CHAT_MARK):])
    if not chat["add_generation_prompt"]:
        raise UsageError(f"{where}: the task prefills the assistant turn (gen_prefix), which chat contexts here "
                         "cannot express; run it with --lm-eval-template raw")
    return tuple(Message(m["role"], m["content"]) for m in chat["messages"])


# -- Instance <-> our records ----------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """What a generation request takes from the run: its seed and the --max-tokens override."""

    seed: int | None = None
    max_tokens: int | None = None


def to_record(request_type: str, args: tuple[Any, ...], rid: str, repeats: int = 1,
              sampling: Sampling = Sampling()) -> Request | LoglikelihoodRequest:
    """One lm-eval Instance's arguments as our request."""
    if request_type == "loglikelihood":
        return LoglikelihoodRequest(id=rid, context=context_of(args[0], rid), continuation=args[1])
    if request_type == "loglikelihood_rolling":
        return LoglikelihoodRequest(id=rid, context="", continuation=args[0])
    if request_type != "generate_until":
        raise UsageError(f"{rid}: lm-eval request type {request_type!r} is not supported (generate_until, "
                         "loglikelihood, loglikelihood_rolling are)")
    kwargs = dict(args[1])
    until = kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    sample = bool(kwargs.get("do_sample", False))
    temperature = float(kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
    context = context_of(args[0], rid)
    common = {"id": rid, "max_tokens": sampling.max_tokens or int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
              "temperature": temperature, "top_p": float(kwargs.get("top_p", 1.0)) if sample else 1.0,
              "n": repeats, "stop": until, "seed": sampling.seed}
    if isinstance(context, str):
        return Request(prompt=context, **common)
    return Request(messages=context, **common)


def response_of(request_type: str, result: Completion | LoglikelihoodResult) -> list[Any]:
    """Our result as the Instance's ``resps`` (one entry per repeat), or a ValueError saying why not."""
    if result.error is not None:
        raise ValueError(result.error)
    if isinstance(result, Completion):
        return list(result.texts)
    if result.logprob_sum is None or not math.isfinite(result.logprob_sum):
        raise ValueError(f"no usable log-likelihood: {result.to_dict()}")
    if request_type == "loglikelihood_rolling":
        return [result.logprob_sum]
    return [(result.logprob_sum, bool(result.is_greedy))]


def metric_key(metric: str, filter_name: str) -> str:
    """lm-eval's ``exact_match,strict-match`` as a per-item score key (``exact_match:strict-match``)."""
    return metric if filter_name == "none" else f"{metric}:{filter_name}"


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
