"""Benchmark registry: one file per benchmark, imported only when chosen.

``--suite all`` means every task registered here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from harness.core.errors import UsageError

if TYPE_CHECKING:
    from harness.core.records import Task
    from harness.run.runner import TaskOptions

# name -> "module:class"
REGISTRY: dict[str, str] = {
    "gsm8k": "harness.tasks.gsm8k:GSM8K",
    "humaneval": "harness.tasks.humaneval:HumanEval",
    "mt_bench": "harness.tasks.mt_bench:MTBench",
}


def resolve_suites(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            names.extend(REGISTRY)
        elif part in REGISTRY:
            names.append(part)
        else:
            raise UsageError(f"unknown suite {part!r}; choose from: all, {', '.join(REGISTRY)}")
    if not names:
        raise UsageError(f"--suite {text!r} names no task; choose from: all, {', '.join(REGISTRY)}")
    return tuple(dict.fromkeys(names))


def build_task(name: str, options: TaskOptions) -> Task:
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(options)


def describe_tasks() -> str:
    lines = []
    for name, target in REGISTRY.items():
        module, cls = target.split(":")
        obj = getattr(importlib.import_module(module), cls)
        doc = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
        lines.append(f"{name:10s} v{obj.version}  {doc}")
    return "\n".join(lines)
