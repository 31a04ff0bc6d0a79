"""The import rules of docs/architecture.md: layers import downwards only, no cycles (but inside data/), the
HTTP layer is imported by nothing but the command line, the training loop only by what trains, and the method
registry imports none of its users. Imports are read with `ast`, lazy ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

SRC = REPO / "src"

# Bottom to top. A module may import modules of its own package and of lower layers, never higher ones.
LAYERS = ["errors", "registry", "io", "version", "progress", "config", "data", "tasks", "models", "methods", "runs",
          "train", "inference", "zeroshot", "workflows", "api", "experiments", "analyze", "report", "serve", "cli",
          ""]  # "": the package itself (emotune/__init__.py: the public API and registrations)
CYCLES_ALLOWED_IN = {"data"}  # the named data sets register into data.base, which reads them back


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "emotune").rglob("*.py")}


def imports() -> dict[str, set[str]]:
    """Module -> the emotune modules it imports (``from x import y`` counts y when y is a module)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(LAYERS)


def test_layers_import_downwards_only():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(f"{m} -> {t}" for m, targets in imports().items() for t in targets
                    if layer(t) != layer(m) and rank[layer(t)] > rank[layer(m)])
    assert not upward, "imports pointing upwards:\n" + "\n".join(upward)


def test_no_import_cycles_outside_data():
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    bad = [sorted(c) for c in cycles if {layer(m) for m in c} - CYCLES_ALLOWED_IN]
    assert not bad, f"import cycles: {bad}"


def test_serve_is_imported_only_by_itself_and_the_command_line():
    outside = sorted(f"{m} -> {t}" for m, targets in imports().items() for t in targets
                     if layer(t) == "serve" and layer(m) not in ("serve", "cli"))
    assert not outside, outside


def test_the_training_loop_is_imported_only_by_what_trains():
    trainers = {"emotune.api", "emotune.train.multitask", "emotune.train.instruct"}  # api.train and its multi-task
    # and instruction-tuning paths
    users = {m for m, targets in imports().items() if "emotune.train.loop" in targets}
    assert users <= trainers, users


def test_the_method_registry_imports_none_of_its_users():
    assert {t for t in imports()["emotune.methods"] if not t.startswith("emotune.methods")} == set()


def test_run_file_names_are_spelled_only_in_runs_py():
    """runs.py owns the run folder: elsewhere its file names come from its constants, never string literals."""
    from emotune.runs import RUN_FILES

    spelled = []
    for name, path in modules().items():
        if name == "emotune.runs":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                spelled.append(f"{name}:{node.lineno} {node.value!r}")
    assert not spelled, spelled
