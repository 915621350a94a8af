"""The vLLM adapter without vLLM: engine planning (CPU defaults, LoRA), the
order-preserving split and merge, and that options reach the engine, through
a fake ``vllm`` module that captures what ``vllm.LLM`` / ``AsyncEngineArgs``
receive. The real engine is exercised in test_vllm_engine.py (-m vllm)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from harness.adapters.vllm import (
    EnginePlan,
    VLLMAdapter,
    cpu_bind_list,
    merge_outputs,
    plan_engine,
    run_chunked,
    split_lora_target,
)
from harness.core.errors import EngineError, UsageError
from harness.core.models import ModelSpec
from harness.core.records import Completion, Message, Request


def _chat(i: int, **kw: Any) -> Request:
    return Request(id=f"q{i}", messages=(Message("user", f"question {i}"),), **kw)


# -- planning --------------------------------------------------------------------------------------

def test_cpu_defaults_fill_only_what_the_user_did_not_set() -> None:
    plan = plan_engine({"dtype": "bfloat16"}, "/m", on_cpu=True, environ={"VLLM_CPU_KVCACHE_SPACE": "8"},
                       cpus=[0, 1, 2, 3])
    assert plan.kwargs == {"model": "/m", "dtype": "bfloat16", "enforce_eager": True,
                           "distributed_executor_backend": "uni"}
    assert plan.env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-3",
                        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_one_cpu_rank_runs_in_process_unless_the_user_chose_a_backend() -> None:
    """vLLM's default spawns an engine-core and a worker process, each importing vLLM again (~33 s here)."""
    own = plan_engine({"distributed_executor_backend": "mp"}, "/m", on_cpu=True, environ={}, cpus=[0, 1])
    assert own.kwargs["distributed_executor_backend"] == "mp" and "VLLM_ENABLE_V1_MULTIPROCESSING" not in own.env
    kept = plan_engine({}, "/m", on_cpu=True, environ={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, cpus=[0, 1])
    assert kept.kwargs["distributed_executor_backend"] == "uni" and "VLLM_ENABLE_V1_MULTIPROCESSING" not in kept.env
    two = plan_engine({"tensor_parallel_size": 2}, "/m", on_cpu=True, environ={}, cpus=[0, 1, 2, 3])
    assert "distributed_executor_backend" not in two.kwargs and "VLLM_ENABLE_V1_MULTIPROCESSING" not in two.env


def test_no_cpu_defaults_on_gpu() -> None:
    plan = plan_engine({"tensor_parallel_size": 8}, "/m", on_cpu=False, environ={}, cpus=[0, 1])
    assert plan.kwargs == {"model": "/m", "tensor_parallel_size": 8} and plan.env == {}


def test_cpu_bind_list_splits_cores_between_ranks() -> None:
    assert cpu_bind_list([0, 1], 1) == "0-1"
    assert cpu_bind_list(range(16), 2) == "0-7|8-15"
    assert cpu_bind_list([4, 6, 9], 1) == "4,6,9"
    assert cpu_bind_list([0], 2) == ""  # too few cores: leave vLLM's own choice
    plan = plan_engine({"tensor_parallel_size": 2}, "/m", on_cpu=True, environ={}, cpus=[0, 1, 2, 3])
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3"


def test_lora_and_chunk_size_are_ours_not_the_engines(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64, "base_model_name_or_path": "/base"}))
    plan = plan_engine({"lora": str(tmp_path), "chunk_size": 7}, "/m", on_cpu=False, environ={}, cpus=[0])
    assert plan.lora_path == str(tmp_path) and plan.chunk_size == 7
    assert plan.kwargs == {"model": "/m", "enable_lora": True, "max_lora_rank": 64}
    with pytest.raises(UsageError, match="chunk_size"):
        plan_engine({"chunk_size": 0}, "/m", on_cpu=False, environ={}, cpus=[0])
    with pytest.raises(UsageError, match="adapter_config.json"):
        plan_engine({"lora": str(tmp_path / "nope")}, "/m", on_cpu=False, environ={}, cpus=[0])


def test_lora_directory_as_model_serves_its_base(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "/base"}))
    assert split_lora_target(str(tmp_path), {"seed": 1}) == ("/base", {"seed": 1, "lora": str(tmp_path)})
    assert split_lora_target("/plain", {}) == ("/plain", {})


# -- split and merge ---------------------------------------------------------------------------------

def test_run_chunked_keeps_order_and_reports_each_index_once() -> None:
    reqs = [_chat(i) for i in range(10)]
    calls: list[list[str]] = []

    def fake_engine(chunk):  # finishes work in reverse, answers in order, as vLLM does
        calls.append([r.id for r in chunk])
        done = {r.id: Completion(id=r.id, texts=(f"answer {r.id}",)) for r in reversed(chunk)}
        return [done[r.id] for r in chunk]

    seen: list[tuple[int, str]] = []
    out = run_chunked(reqs, 4, fake_engine, on_result=lambda i, c: seen.append((i, c.id)))
    assert [c.id for c in out] == [r.id for r in reqs]
    assert [c.texts[0] for c in out] == [f"answer q{i}" for i in range(10)]
    assert calls == [["q0", "q1", "q2", "q3"], ["q4", "q5", "q6", "q7"], ["q8", "q9"]]
    assert seen == [(i, f"q{i}") for i in range(10)]


def test_run_chunked_refuses_a_misaligned_engine() -> None:
    with pytest.raises(EngineError, match="outputs"):
        run_chunked([_chat(0), _chat(1)], 8, lambda chunk: [Completion(id="q0")])
    with pytest.raises(EngineError, match="belongs to"):
        run_chunked([_chat(0), _chat(1)], 8, lambda chunk: [Completion(id="q1"), Completion(id="q0")])


def test_merge_puts_rejected_prompts_back_in_place() -> None:
    rejected = Completion(id="q1", error="prompt too long")
    prepared = ["p0", rejected, "p2", "p3"]
    merged = merge_outputs(prepared, ["o0", "o2", "o3"], lambda i, o: Completion(id=f"q{i}", texts=(o,)))
    assert merged[1] is rejected
    assert [c.texts for c in merged if c is not rejected] == [("o0",), ("o2",), ("o3",)]
    with pytest.raises(EngineError):
        merge_outputs(prepared, ["o0"], lambda i, o: Completion(id=str(i)))


# -- a fake vllm that captures what the adapter hands it -------------------------------------------

@dataclasses.dataclass
class FakeEngineArgs:
    model: str = ""
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    data_parallel_backend: str = "mp"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    seed: int = 0
    enable_lora: bool = False
    max_lora_rank: int = 16
    distributed_executor_backend: str | None = None
    disable_log_stats: bool = False


class FakeParams:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _output(prompt: dict, params: FakeParams) -> Any:
    ids = prompt["prompt_token_ids"]
    outs = [types.SimpleNamespace(index=k, text=f"{len(ids)}:{params.max_tokens}:{k}", token_ids=[1, 2],
                                  finish_reason="length") for k in reversed(range(params.n))]
    return types.SimpleNamespace(prompt_token_ids=ids, outputs=outs)


class FakeLLM:
    created: list[dict[str, Any]] = []
    calls: list[tuple[list, list, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        FakeLLM.created.append(kwargs)
        config = types.SimpleNamespace(max_model_len=kwargs.get("max_model_len") or 64)
        self.llm_engine = types.SimpleNamespace(model_config=config,
                                                engine_core=types.SimpleNamespace(shutdown=lambda: None))

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        FakeLLM.calls.append((prompts, params, lora_request))
        return [_output(p, s) for p, s in zip(prompts, params, strict=True)]


class FakeAsyncLLM:
    created: list[Any] = []

    def __init__(self, args: FakeEngineArgs) -> None:
        self.model_config = types.SimpleNamespace(max_model_len=args.max_model_len or 64)

    @classmethod
    def from_engine_args(cls, args: FakeEngineArgs) -> FakeAsyncLLM:
        cls.created.append(args)
        return cls(args)

    async def generate(self, prompt, params, request_id, lora_request=None):
        # Later requests finish first: gather must still return them in order.
        await asyncio.sleep(0.001 * (100 - int(request_id.rsplit("-", 1)[1])))
        yield _output(prompt, params)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    FakeLLM.created.clear()
    FakeLLM.calls.clear()
    FakeAsyncLLM.created.clear()
    mods = {name: types.ModuleType(name) for name in (
        "vllm", "vllm.platforms", "vllm.lora", "vllm.lora.request", "vllm.engine", "vllm.engine.arg_utils",
        "vllm.sampling_params", "vllm.v1", "vllm.v1.engine", "vllm.v1.engine.async_llm")}
    v = mods["vllm"]
    v.__version__ = "0.0-fake"
    v.LLM, v.SamplingParams, v.EngineArgs = FakeLLM, FakeParams, FakeEngineArgs
    v.platforms, v.lora = mods["vllm.platforms"], mods["vllm.lora"]
    mods["vllm.platforms"].current_platform = types.SimpleNamespace(is_cpu=lambda: True)
    mods["vllm.lora"].request = mods["vllm.lora.request"]
    mods["vllm.lora.request"].LoRARequest = lambda name, i, path: ("lora", name, i, path)
    mods["vllm.engine.arg_utils"].AsyncEngineArgs = FakeEngineArgs
    mods["vllm.sampling_params"].RequestOutputKind = types.SimpleNamespace(FINAL_ONLY="final")
    mods["vllm.v1.engine.async_llm"].AsyncLLM = FakeAsyncLLM
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND",
                "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(var, "x")  # recorded, so what the adapter sets is undone afterwards
        monkeypatch.delenv(var)
    monkeypatch.setattr("harness.adapters.vllm._SET_HERE", {})
    return v


def test_engine_options_reach_vllm_llm(fake_vllm, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # the user's choice wins
    args = {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "max_model_len": 512, "seed": 3,
            "gpu_memory_utilization": 0.5, "distributed_executor_backend": "ray"}
    adapter = VLLMAdapter(ModelSpec("vllm", str(tiny_llama), args), str(tiny_llama))
    assert FakeLLM.created == [{"model": str(tiny_llama), **args, "enforce_eager": True, "dtype": "float32"}]
    desc = adapter.describe()
    assert desc["kind"] == "vllm" and desc["vllm_version"] == "0.0-fake" and desc["fingerprint"]
    assert desc["engine"] == {"dtype": "float32", "enforce_eager": True, **args}  # the record: every option
    assert desc["cpu_defaults"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "VLLM_CPU_KVCACHE_SPACE" not in desc["cpu_defaults"]


def test_prompts_are_rendered_once_and_sent_as_token_ids(fake_vllm, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    adapter = VLLMAdapter(ModelSpec("vllm", str(tiny_llama), {"chunk_size": 3}), str(tiny_llama))
    reqs = [_chat(i, max_tokens=5 + i, n=1 + i % 2, stop=("\n\n",), seed=i) for i in range(7)]
    reqs.append(Request(id="raw", prompt="def f():", max_tokens=9, temperature=0.8, top_p=0.9))
    seen: list[int] = []
    out = adapter.generate(reqs, on_result=lambda i, c: seen.append(i))
    assert [c.id for c in out] == [r.id for r in reqs] and seen == list(range(8))
    assert [len(call[0]) for call in FakeLLM.calls] == [3, 3, 2]  # chunk_size requests per engine call
    prompts = [p for call in FakeLLM.calls for p in call[0]]
    params = [s for call in FakeLLM.calls for s in call[1]]
    for r, p, s, c in zip(reqs, prompts, params, out, strict=True):
        if r.prompt is None:
            text = tok.apply_chat_template([{"role": "user", "content": r.messages[0].content}], tokenize=False,
                                           add_generation_prompt=True)
            assert p["prompt_token_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        assert (s.n, s.temperature, s.top_p, s.max_tokens, s.seed) == (r.n, r.temperature, r.top_p, r.max_tokens,
                                                                         r.seed)
        assert s.stop == (list(r.stop) or None)
        assert c.texts == tuple(f"{len(p['prompt_token_ids'])}:{r.max_tokens}:{k}" for k in range(r.n))


def test_too_long_prompt_is_a_per_request_error(fake_vllm, tiny_llama: Path) -> None:
    adapter = VLLMAdapter(ModelSpec("vllm", str(tiny_llama), {"max_model_len": 40}), str(tiny_llama))
    reqs = [_chat(0, max_tokens=100), Request(id="long", prompt="word " * 200), _chat(2)]
    out = adapter.generate(reqs)
    assert out[1].error and "max_model_len is 40" in out[1].error
    assert out[0].error is None and out[2].error is None
    # max_tokens is capped to the room left in the context, as vLLM's server does
    assert FakeLLM.calls[0][1][0].max_tokens == 40 - len(FakeLLM.calls[0][0][0]["prompt_token_ids"])


def test_lora_request_goes_with_every_prompt(fake_vllm, tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": str(tiny_llama)}))
    adapter = VLLMAdapter(ModelSpec("vllm", str(tmp_path)), str(tmp_path))
    adapter.generate([_chat(0)])
    assert FakeLLM.created[0]["model"] == str(tiny_llama) and FakeLLM.created[0]["enable_lora"] is True
    assert FakeLLM.calls[0][2] == ("lora", "adapter", 1, str(tmp_path))
    assert adapter.describe()["lora_fingerprint"]


def test_data_parallel_runs_vllms_async_engine_in_order(fake_vllm, tiny_llama: Path) -> None:
    args = {"data_parallel_size": 4, "data_parallel_backend": "ray", "tensor_parallel_size": 2}
    adapter = VLLMAdapter(ModelSpec("vllm", str(tiny_llama), args), str(tiny_llama))
    assert FakeLLM.created == []
    (engine_args,) = FakeAsyncLLM.created
    assert (engine_args.data_parallel_size, engine_args.data_parallel_backend, engine_args.tensor_parallel_size) == \
        (4, "ray", 2)
    reqs = [_chat(i, max_tokens=1 + i) for i in range(20)]
    out = adapter.generate(reqs)
    assert [c.id for c in out] == [r.id for r in reqs]
    assert [c.texts[0].split(":")[1] for c in out] == [str(1 + i) for i in range(20)]
    adapter.close()


def test_user_mistakes_fail_before_the_engine_starts(fake_vllm, tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="tensor_parallel_size"):
        VLLMAdapter(ModelSpec("vllm", str(tiny_llama), {"tensor_parallel": 2}), str(tiny_llama))
    with pytest.raises(UsageError, match="max_num_seqs"):
        VLLMAdapter(ModelSpec("vllm", str(tiny_llama), {"batch_size": 8}), str(tiny_llama))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_llama.iterdir():
        if f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="--chat-template"):
        VLLMAdapter(ModelSpec("vllm", str(bare)), str(bare))
    assert FakeLLM.created == []
    VLLMAdapter(ModelSpec("vllm", str(bare)), str(bare), chat_template="{{ messages[0]['content'] }}")
    assert len(FakeLLM.created) == 1


def test_missing_vllm_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch, tiny_llama: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UsageError, match="pip install vllm") as err:
        VLLMAdapter(ModelSpec("vllm", str(tiny_llama)), str(tiny_llama))
    assert "\n" not in str(err.value)


def test_engine_plan_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EnginePlan(kwargs={}).chunk_size = 3  # type: ignore[misc]


def test_a_later_engine_plans_from_the_users_environment_not_an_earlier_adapters(
        fake_vllm, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import harness.adapters.vllm as vllm_adapter

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # the user's: never replaced or removed
    monkeypatch.setattr(vllm_adapter, "_usable_cpus", lambda: [0, 1, 2, 3])
    VLLMAdapter(ModelSpec("vllm", str(tiny_llama)), str(tiny_llama))
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
    two = VLLMAdapter(ModelSpec("vllm", str(tiny_llama), {"tensor_parallel_size": 2}), str(tiny_llama))
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # one rank's in-process default is gone
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == two.describe()["cpu_defaults"]["VLLM_CPU_OMP_THREADS_BIND"]
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3" and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert FakeLLM.created[-1].get("distributed_executor_backend") is None
