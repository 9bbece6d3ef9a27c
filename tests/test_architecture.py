"""The floors of the package point one way (ARCHITECTURE.md), checked on the source.

The import graph is read with ``ast`` from the installed package's source files (the
package-dir mapping puts ``passes/``, ``runtime/``, ``cli/`` under ``onnx_rmpe``).
Every import counts: module level and lazy (inside functions), ``import a.b`` and
``from a import b`` (an edge to ``a.b`` when that is a module, else to ``a``). An edge to
a module does not count its parent packages' ``__init__`` (Python runs them, but they are
the public facade, not a dependency of the code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import onnx_rmpe

#: Job modules: they compose passes and runtime (and each other) to do one user task.
JOBS = ("onnx_rmpe.conversion", "onnx_rmpe.calibration",
        "onnx_rmpe.evaluation", "onnx_rmpe.finetune", "onnx_rmpe.reporting", "onnx_rmpe.inspect",
        "onnx_rmpe.forms", "onnx_rmpe.thresholds", "onnx_rmpe.demo", "onnx_rmpe.nir",
        "onnx_rmpe.nir_input", "onnx_rmpe.nir_state", "onnx_rmpe.nir_walk",
        "onnx_rmpe.keras", "onnx_rmpe.recipe", "onnx_rmpe.lightzoo", "onnx_rmpe.refine",
        "onnx_rmpe.finetune_snn", "onnx_rmpe.pipeline", "onnx_rmpe.torch")
#: The ground floor: what passes/ may import besides itself.
GROUND = ("onnx_rmpe.ops", "onnx_rmpe.errors")
#: Import cycles that are allowed, with the reason. None today.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the installed package."""
    found: dict[str, Path] = {}
    for sub in ("", "passes", "runtime", "cli"):
        mod = onnx_rmpe if not sub else __import__(f"onnx_rmpe.{sub}", fromlist=["_"])
        root = Path(mod.__file__).parent
        prefix = "onnx_rmpe" + (f".{sub}" if sub else "")
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            if not sub and rel[0] in ("passes", "runtime", "cli"):
                continue
            name = ".".join((prefix, *rel))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[:len(parts) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # import a.b.c of a function-free path
                t = t.rpartition(".")[0]
            if t and t != name:
                edges.add(t)
    return edges


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_graph_is_read():
    assert len(MODULES) > 60
    assert "onnx_rmpe.passes.base" in GRAPH["onnx_rmpe.passes.normalize"]
    assert "onnx_rmpe.runtime.session" in GRAPH["onnx_rmpe.evaluation"]
    assert "onnx_rmpe.conversion" in GRAPH["onnx_rmpe.cli.convert"]  # lazy import counted


@pytest.mark.parametrize("floor", ["onnx_rmpe.passes"])
def test_passes_import_only_the_ground_floor(floor):
    bad = {(m, t) for m, ts in GRAPH.items() if _in(m, [floor]) for t in ts
           if not _in(t, [floor, *GROUND])}
    assert not bad, sorted(bad)


def test_runtime_imports_no_pass_and_no_job():
    bad = {(m, t) for m, ts in GRAPH.items() if _in(m, ["onnx_rmpe.runtime"]) for t in ts
           if _in(t, ["onnx_rmpe.passes", "onnx_rmpe.cli", *JOBS])}
    assert not bad, sorted(bad)


def test_ground_floor_imports_nothing_of_the_package():
    for name in GROUND:
        assert not {t for t in GRAPH[name] if t.startswith("onnx_rmpe")}, name


def test_cli_is_imported_by_nobody():
    bad = {(m, t) for m, ts in GRAPH.items() if not _in(m, ["onnx_rmpe.cli"]) for t in ts
           if _in(t, ["onnx_rmpe.cli"])}
    assert not bad, sorted(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = [c for c in _cycles() if frozenset(c) not in ALLOWED_CYCLES]
    assert not cycles, cycles


def test_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "onnx_rmpe.ops", {"onnx_rmpe.errors"})
    monkeypatch.setitem(GRAPH, "onnx_rmpe.errors", {"onnx_rmpe.ops"})
    assert ["onnx_rmpe.errors", "onnx_rmpe.ops"] in _cycles()


def test_no_public_function_shadows_a_module():
    """``onnx_rmpe.<name>`` is the function for every public name: no module of that name.

    A module named like the function it defines (``onnx_rmpe/convert.py`` defining
    ``convert``) is hidden by the facade's re-export: ``import onnx_rmpe.convert as m``
    gives the function, not the module.
    """
    import importlib.util

    shadowed = [name for name in onnx_rmpe.__all__
                if importlib.util.find_spec(f"onnx_rmpe.{name}") is not None]
    assert shadowed == []
    assert callable(onnx_rmpe.convert) and callable(onnx_rmpe.evaluate)
    assert callable(onnx_rmpe.calibrate) and callable(onnx_rmpe.report)
