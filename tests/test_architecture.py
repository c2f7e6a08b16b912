"""The import graph of ovprof: no cycles, and every arrow points down the layer list.

    python -m pytest tests/test_architecture.py

Reads the sources with `ast` and never imports them. Every `import` and
`from ... import` of an ovprof module counts, also inside functions (a lazy
import hides a cycle from the interpreter, not from the design); relative
imports are resolved; imports under `if TYPE_CHECKING:` are left out (they
never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from conftest import ROOT

# Lowest first. A module may import from its own layer or any layer below it, never above.
# "ovprof" is the package __init__ alone; every other name covers its submodules too.
# ovprof.api is the Python API (`ovprof.load_records`): a facade over everything, so it sits on top. The package
# __init__ reaches it only through a PEP 562 __getattr__ (importlib, on first use): no import statement, and
# importing ovprof stays free of pandas and torch.
LAYERS: list[tuple[str, ...]] = [
    ("ovprof", "ovprof.errors", "ovprof.presets", "ovprof.metrics", "ovprof.paths"),  # leaves: no ovprof imports above them
    ("ovprof.measure",),  # timing, memory, FLOPs, hardware, environment
    ("ovprof.kernels", "ovprof.models"),  # what a run computes
    ("ovprof.objectives",),
    ("ovprof.config",),  # RunConfig and friends, built from the layers below
    ("ovprof.results",),  # the record and the store
    ("ovprof.estimate", "ovprof.runner"),  # predict a run; make a run
    ("ovprof.sweep", "ovprof.report", "ovprof.check", "ovprof.export"),  # many runs; read them back; gate them;
    # hand them to other tools
    ("ovprof.commands",),  # one module per command
    ("ovprof.cli", "ovprof.api"),  # the root Typer app; the Python API
]


@dataclass(frozen=True)
class Edge:
    path: str  # importing file, relative to the repository root
    line: int
    source: str  # importing module
    target: str  # imported module

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def module_name(path: str) -> str:
    """'ovprof/report/tables.py' -> 'ovprof.report.tables'; a package's __init__.py is the package."""
    parts = path[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the most specific name that covers `module`, or None."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            covers = module == name or (name != "ovprof" and module.startswith(name + "."))
            if covers and len(name) > best_len:
                best, best_len = i, len(name)
    return best


def layer_label(i: int) -> str:
    return f"{i} ({', '.join(LAYERS[i])})"


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except in the body of `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_edges(sources: dict[str, str]) -> list[Edge]:
    """The ovprof -> ovprof imports of the given files ({path relative to the root: source text})."""
    modules = {module_name(p) for p in sources}
    edges = []
    for path, text in sources.items():
        me = module_name(path)
        package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
        for node in _imports(ast.parse(text, filename=path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # from . import x / from ..a import b
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import name`: name is a submodule when one exists, else an attribute of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in dict.fromkeys(targets):
                if (t == "ovprof" or t.startswith("ovprof.")) and t != me:
                    edges.append(Edge(path, node.lineno, me, t))
    return sorted(edges, key=lambda e: (e.path, e.line, e.target))


def upward(edges: list[Edge]) -> list[str]:
    """Each import from a lower layer to a higher one, as a readable line."""
    out = []
    for e in edges:
        a, b = layer_of(e.source), layer_of(e.target)
        if a is not None and b is not None and b > a:
            out.append(f"{e} (layer {layer_label(a)} < layer {layer_label(b)})")
    return out


def unlayered(sources: dict[str, str]) -> list[str]:
    return [f"{p}: {module_name(p)} is in no layer: add it to the layer list in tests/test_architecture.py"
            for p in sorted(sources) if layer_of(module_name(p)) is None]


def cycles(edges: list[Edge]) -> list[str]:
    """One cycle per strongly connected component of the module graph, as the chain of its imports."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)  # first import of a target is enough
    # Tarjan's strongly connected components, iterative
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    out = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        # shortest way from start back to itself inside the component (breadth first)
        prev: dict[str, Edge] = {}
        frontier = [start]
        while start not in prev:
            nxt = []
            for v in frontier:
                for w, e in sorted(graph.get(v, {}).items()):
                    if w in members and w not in prev:
                        prev[w] = e
                        nxt.append(w)
            frontier = nxt
        chain, v = [], start
        while True:
            e = prev[v]
            chain.append(e)
            v = e.source
            if v == start:
                break
        chain.reverse()
        out.append(" -> ".join([start, *(e.target for e in chain)]) + "\n    " +
                   "\n    ".join(str(e) for e in chain))
    return sorted(out)


def package_sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "ovprof").rglob("*.py"))}


# -- the package --------------------------------------------------------------------------


def test_every_module_is_in_a_layer():
    missing = unlayered(package_sources())
    assert not missing, "\n".join(missing)


def test_no_import_points_up_the_layers():
    bad = upward(import_edges(package_sources()))
    assert not bad, f"{len(bad)} import(s) from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_edges(package_sources()))
    assert not found, (f"{len(found)} import cycle(s) (one per group of modules that reach each other; "
                       "break it and run again for the next):\n" + "\n".join(found))


# -- the checker itself: it must be able to fail ----------------------------------------------


PLANTED = {
    "ovprof/__init__.py": "",
    "ovprof/measure/__init__.py": "",
    "ovprof/measure/flops.py": "def f():\n    from ovprof.config import RunConfig\n",  # upward, lazy
    "ovprof/measure/timing.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ovprof.cli import app\n"  # never runs: not an edge
        "from . import memory\n"),  # relative, same layer: allowed
    "ovprof/measure/memory.py": "import ovprof.errors\n",
    "ovprof/config.py": "from ovprof.measure import flops\n",
    "ovprof/report/__init__.py": "",
    "ovprof/report/a.py": "from ovprof.report.b import x\n",
    "ovprof/report/b.py": "def build():\n    from .c import y\n",  # the cycle goes through a lazy import
    "ovprof/report/c.py": "from ..report import a\n",
    "ovprof/stray.py": "",
}


def test_checker_reports_a_planted_upward_import():
    assert upward(import_edges(PLANTED)) == [
        "ovprof/measure/flops.py:2 imports ovprof.config (layer 1 (ovprof.measure) < layer 4 (ovprof.config))"]


def test_checker_resolves_relative_and_skips_type_checking_imports():
    edges = {(e.source, e.target) for e in import_edges(PLANTED)}
    assert ("ovprof.measure.timing", "ovprof.measure.memory") in edges
    assert ("ovprof.report.c", "ovprof.report.a") in edges
    assert not any(t == "ovprof.cli" for _, t in edges)


def test_checker_reports_a_planted_cycle():
    found = cycles(import_edges(PLANTED))
    assert len(found) == 2, found
    assert found[0].splitlines()[0] == "ovprof.config -> ovprof.measure.flops -> ovprof.config"
    assert found[1].splitlines() == [
        "ovprof.report.a -> ovprof.report.b -> ovprof.report.c -> ovprof.report.a",
        "    ovprof/report/a.py:1 imports ovprof.report.b",
        "    ovprof/report/b.py:2 imports ovprof.report.c",
        "    ovprof/report/c.py:1 imports ovprof.report.a"]


def test_checker_reports_a_module_in_no_layer():
    assert unlayered(PLANTED) == [
        "ovprof/stray.py: ovprof.stray is in no layer: add it to the layer list in tests/test_architecture.py"]
