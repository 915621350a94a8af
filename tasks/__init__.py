"""Benchmark registry: one file per benchmark, imported only when chosen.

Each task class declares its own options (``Options``, a frozen dataclass of
``harness.core.options.option`` fields), what it needs from the run
(``needs_chat``, ``needs_judge``, ``needs_code_execution``) and the gate's
default allowed drop (``default_max_drop``). The CLI flags, the study's
``[eval.<task>]`` tables and their validation are generated from that.

Adding a benchmark is one file plus one line: a ``"name": "module:Class"``
entry below, or, from outside this package, ``harness.tasks.register(name,
"module:Class")`` or an entry point in the ``sft_harness.tasks`` group
(see docs/adding-a-benchmark.md). ``--suite all`` means every registered task.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from harness.core.errors import UsageError
from harness.core.options import Options, SharedOptions, from_namespace, iter_flags, specs

if TYPE_CHECKING:
    from harness.core.records import Task

ENTRY_POINT_GROUP = "sft_harness.tasks"

# name -> "module:Class" (or the class itself, for tasks registered at run time)
REGISTRY: dict[str, Any] = {
    "gsm8k": "harness.tasks.gsm8k:GSM8K",
    "humaneval": "harness.tasks.humaneval:HumanEval",
    "mt_bench": "harness.tasks.mt_bench:MTBench",
    "probe_math": "harness.tasks.probes:ProbeMath",
    "probe_code": "harness.tasks.probes:ProbeCode",
    "probe_general": "harness.tasks.probes:ProbeGeneral",
    # a family: --suite lm_eval:TASK runs any lm-evaluation-harness task or group (tasks/lm_eval.py)
    "lm_eval": "harness.tasks.lm_eval:LmEval",
    "representations": "harness.tasks.representations:Representations",
}

# Name prefix -> "module:function" that builds the task class for any name with that prefix: a study's
# held-out probes ("holdout_math") exist only for the sources a study declares, so a later process
# (`harness score` on a stage's run) rebuilds them from their name.
PREFIXES: dict[str, str] = {"holdout_": "harness.train.holdout:class_for_task"}

# --suite names for several tasks at once. ``all`` is every registered task except those that
# declare ``in_suite_all = False`` (probe_general needs a file); name those explicitly.
GROUPS: dict[str, tuple[str, ...]] = {"probes": ("probe_math", "probe_code")}

# Run-level flags, so a task option can never shadow one (checked in ``check_flags``).
RUN_FLAGS = frozenset({"--model", "--model-args", "--base-url", "--chat-template", "--concurrency", "--suite",
                       "--out", "--run-id", "--fresh", "--label", "--judge", "--judge-base-url", "--judge-args",
                       "--judge-concurrency", "--baseline", "--fail-on-regression", "--max-drop", "--alpha"})


def register(name: str, target: str | type) -> None:
    """Add a task: ``target`` is ``"module:Class"`` (imported when first used) or the class."""
    if not name.isidentifier():
        raise ValueError(f"task name {name!r} must be an identifier (letters, digits, _), as in --suite {name}")
    if name in _registry() and _registry()[name] != target:
        raise ValueError(f"task {name!r} is already registered as {_registry()[name]}")
    REGISTRY[name] = target
    task_class.cache_clear()


def _registry() -> dict[str, Any]:
    """The built-in tasks plus those installed packages declare as entry points (loaded once)."""
    if not _entry_points_loaded:
        _entry_points_loaded.append(True)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            REGISTRY.setdefault(ep.name, ep.value)
    return REGISTRY


_entry_points_loaded: list[bool] = []


@cache
def task_class(name: str) -> type:
    family, sep, member = name.partition(":")
    if sep:  # "lm_eval:arc_easy": a member of a family task, built by the family's class
        return task_class(family).for_task(member)
    if name not in _registry():
        prefix = _prefix(name)
        if prefix is None:
            raise KeyError(name)
        module, _, func = PREFIXES[prefix].partition(":")
        return getattr(importlib.import_module(module), func)(name)
    target = _registry()[name]
    if not isinstance(target, str):
        return target
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def _prefix(name: str) -> str | None:
    return next((p for p in PREFIXES if name.startswith(p) and len(name) > len(p)), None)


def is_task(name: str) -> bool:
    """A registered task, or one a prefix family builds (``holdout_<source>``); not an lm_eval member."""
    return name in _registry() or _prefix(name) is not None


def names() -> list[str]:
    return list(_registry())


def options_classes(suites: Sequence[str] | None = None) -> dict[str, type[Options]]:
    """Task name -> its options dataclass, for the given suites (default: every task)."""
    return {n: task_class(n).Options for n in (suites if suites is not None else names())}


def check_flags() -> None:
    """Two tasks (or a task and the run) claiming one flag is a programming error: say who."""
    owners: dict[str, str] = dict.fromkeys(RUN_FLAGS, "the run")
    owners.update((s.flag, "the run (shared)") for s in specs(SharedOptions))
    for flag, owner in iter_flags(options_classes()):
        if flag in owners:
            raise ValueError(f"task {owner} declares {flag}, which {owners[flag]} already uses; give the "
                             "field its own flag (option(..., flag='--<task>-<name>'))")
        owners[flag] = owner


def resolve_suites(text: str) -> tuple[str, ...]:
    known = names()
    choices = ", ".join(["all", *GROUPS, *known])
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            out.extend(n for n in known if getattr(task_class(n), "in_suite_all", True))
        elif part in GROUPS:
            out.extend(GROUPS[part])
        elif part in known:
            out.append(part)
        elif part.partition(":")[0] in known and hasattr(task_class(part.partition(":")[0]), "for_task"):
            task_class(part)  # the member's name is checked here
            out.append(part)
        else:
            raise UsageError(f"unknown suite {part!r}; choose from: {choices}")
    if not out:
        raise UsageError(f"--suite {text!r} names no task; choose from: {choices}")
    return tuple(dict.fromkeys(out))


def build_task(name: str, options: Options | None = None, shared: SharedOptions | None = None) -> Task:
    """One task, with the opt-ins it declares checked first (CLI wording)."""
    return build_tasks((name,), {name: options} if options is not None else {}, shared or SharedOptions())[0]


def build_tasks(suites: Sequence[str], options: Mapping[str, Options], shared: SharedOptions, *,
                opt_in: str = "add --allow-code-execution (or set HARNESS_ALLOW_CODE_EXECUTION=1)",
                leave_out: str = "--suite {others}") -> list[Task]:
    """Every task of the suites, or a UsageError before any is built.

    ``opt_in``/``leave_out`` word the remedies for where the user configures the run
    (the study says ``allow_code_execution = true`` in ``[eval]``).
    """
    for name in suites:
        cls = task_class(name)
        if cls.needs_code_execution and not shared.allow_code_execution:
            # What to run instead: this run's tasks that execute no code, else every such task of `all`.
            others = ",".join(n for n in suites if not task_class(n).needs_code_execution) or ",".join(
                n for n in resolve_suites("all") if not task_class(n).needs_code_execution)
            raise UsageError(cls.opt_in.format(opt_in=opt_in, leave_out=leave_out.format(others=others or "NAME")))
    return [task_class(n)(options.get(n) or task_class(n).Options(), shared) for n in suites]


def describe_tasks() -> str:
    lines = []
    for name in names():
        cls = task_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"{name:14s} v{cls.version}  {doc}")
    return "\n".join(lines)


def options_from_flags(args: argparse.Namespace, suites: Sequence[str]) -> dict[str, Options]:
    """Each suite's options from parsed flags; a flag of a task the run leaves out has no effect, so it is refused."""
    for name, cls in options_classes().items():
        runs = name in suites or any(s.startswith(f"{name}:") for s in suites)  # a family runs through its members
        given = [s.flag for s in specs(cls) if not runs and getattr(args, s.dest, None) is not None]
        if given:
            what = "is an option" if len(given) == 1 else "are options"
            raise UsageError(f"{', '.join(given)} {what} of {name}, which --suite {','.join(suites)} does not run; "
                             f"add {name} to --suite or drop the flag")
    return {name: from_namespace(cls, args) for name, cls in options_classes(suites).items()}


def moved_key(key: str) -> tuple[str, str] | None:
    """Where a flat, pre-per-task option name lives now: ``gsm8k_data`` -> ("gsm8k", "data")."""
    for name, cls in options_classes().items():
        for s in specs(cls):
            if key in (s.name, f"{name}_{s.name}", s.dest):
                return name, s.name
    return None


def options_from_record(record: Mapping[str, Any], suites: Sequence[str]) -> tuple[SharedOptions, dict[str, Options]]:
    """The options a run recorded in config.json (``task_options``), rebuilt for ``harness score``.

    Older runs recorded one flat mapping of every task's fields; those are sorted into their tasks.
    """
    if "shared" in record:
        shared = dict(record["shared"])
        per_task = {n: dict(record.get(n) or {}) for n in suites}
    else:
        shared_names = {s.name for s in specs(SharedOptions)}
        shared = {k: v for k, v in record.items() if k in shared_names}
        per_task = {n: {} for n in suites}
        for key, value in record.items():
            where = None if key in shared_names else moved_key(key)
            if where is not None and where[0] in per_task:
                per_task[where[0]][where[1]] = value
    return SharedOptions(**shared), {n: task_class(n).Options(**v) for n, v in per_task.items()}
