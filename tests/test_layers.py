"""The import structure: no cycles among the project's modules, no import of a higher layer.

Layers, low to high (a module may import its own layer's modules and lower layers only):

    harness.core  <  harness.sandbox  <  harness.adapters, harness.tasks  <  harness.readout
                  <  harness.run  <  harness.train  <  harness.cli

* core: records, errors, files, identity, statistics, model specs; imports no other layer.
* sandbox: runs model-written code; needs only core.
* adapters and tasks sit side by side and never import each other: an adapter never sees a task
  and a task never sees an adapter (STYLE.md).
* readout (compare, report, plots, HTML, gate) reads run directories, files only; it needs no
  running code, so it sits below the runner.
* run orchestrates a run: plan, generate (adapters), score (tasks), then the report and the gate
  (readout), so it sits above all of them.
* train builds checkpoints and runs evaluations (run) and reports (readout) over them.
* cli parses and dispatches to every layer.

``harness/__init__.py`` and ``harness/__main__.py`` belong to core and cli. Imports inside
functions count too (they still create the dependency); ``if TYPE_CHECKING:`` blocks do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> import name (pyproject's package-dir).
PACKAGES = {"harness": "harness", "tasks": "harness.tasks", "adapters": "harness.adapters", "train": "harness.train"}
LAYERS = [("harness.core",), ("harness.sandbox",), ("harness.adapters", "harness.tasks"), ("harness.readout",),
          ("harness.run",), ("harness.train",), ("harness.cli", "harness.__main__")]


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child):
            yield from (n for c in child.orelse for n in [c, *_walk(c)])
            continue
        yield child
        yield from _walk(child)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import mod`` depends on pkg.mod; ``from pkg import name`` on pkg itself.
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {_owner(m, known) for m in found if _owner(m, known)} - {name}


def _owner(module: str, known: set[str]) -> str | None:
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def layer(name: str) -> int:
    if name == "harness":
        return 0
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group):
            return i
    raise AssertionError(f"{name} is in no layer: add its package to LAYERS and to this docstring")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer():
    for name in graph():
        layer(name)


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} imports {b}" for a, deps in sorted(graph().items()) for b in sorted(deps)
              if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_walker_sees_lazy_imports_and_skips_type_checking(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import harness.cli\n"
                   "def f():\n    from harness.readout import report\n")
    known = {"harness", "harness.cli", "harness.readout", "harness.readout.report"}
    assert imports("harness.core.m", src, known) == {"harness.readout.report"}
