"""The package's shape, checked from its source: layers import only downwards, no circles, small modules.

The import graph is read with ``ast`` (every ``import`` / ``from`` of an ``sbd_stream`` module, lazy ones
inside functions included), so a newcomer's reading of the plan in docs/design.md stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sbd_stream"

LAYERS: dict[str, int] = {
    "sbd_stream": -1,  # the package root holds only __version__
    "protocol": 0,
    "security": 0,
    "supervisor": 0,
    "worker": 1,
    "frames": 1,
    "metrics": 1,
    "compute": 2,
    "engines": 3,
    "config": 4,
    "formats": 5,
    "sources": 6,
    "sinks": 6,
    "service": 7,
    "merge": 7,
    "cli": 8,
    "__main__": 9,
}
"""Rank of each top-level module or folder: an import must go to a lower rank, or stay in its folder."""

MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["sbd_stream", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``sbd_stream`` modules it imports (at any depth of its code)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if not node.module.startswith("sbd_stream"):
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        deps.discard(name)
        graph[name] = {d for d in deps if d in mods}
    return graph


def group(module: str) -> str:
    """``sbd_stream.sources.dectris.acquisition`` -> ``sources``; the root -> ``sbd_stream``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer() -> None:
    assert {group(m) for m in _modules()} <= set(LAYERS), set(map(group, _modules())) - set(LAYERS)


def test_import_graph_has_no_circles() -> None:
    assert cycles(import_graph()) == []


def test_no_import_runs_back_up_the_layers() -> None:
    """An import goes to a lower layer or stays inside its own folder (sources and sinks never meet)."""
    upward = [
        f"{m} -> {d}"
        for m, deps in sorted(import_graph().items())
        for d in sorted(deps)
        if group(m) != group(d) and LAYERS[group(d)] >= LAYERS[group(m)]
    ]
    assert upward == []


def test_no_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_cli_has_no_type_ignore() -> None:
    hits = [
        str(p.relative_to(PACKAGE))
        for p in (PACKAGE / "cli").rglob("*.py")
        if "type: ignore" in p.read_text()
    ]
    assert hits == []
