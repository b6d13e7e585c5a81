"""The packages' shape, checked from their source: layers import only downwards, no circles, small modules.

The import graph is read with ``ast`` (every ``import`` / ``from`` of an ``sbd_stream`` or ``training``
module, lazy ones inside functions included), so a newcomer's reading of the plan in docs/design.md
stays true. ``training`` is checked the same way with its stages (sim, evaluate, train, recipe, cli).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sbd_stream"

LAYERS: dict[str, int] = {
    "sbd_stream": -1,  # the package root holds only __version__
    "protocol": 0,
    "llr_table": 0,  # the llr message's column table (service/sink.py, batch.py)
    "security": 0,
    "httpd": 0,  # the bounded HTTP server of /metrics and the viewer (a leaf: standard library)
    "log_limit": 0,  # rate-limited log lines for per-event warnings (a leaf: standard library)
    "open_files": 0,  # descriptors against RLIMIT_NOFILE: two gauges, one warning (metrics registers it)
    "zmq_context": 1,  # contexts a sender owns and ends itself (pyzmq; security stops their authenticators)
    "zmq_bind": 1,  # a ZeroMQ bind on the port held since start-up (libzmq adopts it; httpd holds it)
    "sigint_hold": 0,  # Ctrl-C held while torch imports (the console entries; a leaf: standard library)
    "stop_pending": 0,  # stop signals that raise, recorded for a loop's check (a leaf: standard library)
    "invocation": 0,
    "supervisor": 0,
    "worker": 1,
    "frames": 1,
    "metric_names": 0,  # the exported metric names (metrics.py re-exports them)
    "metrics_http": 1,  # /metrics and /healthz over a registry (metrics and merge serve it)
    "metrics": 2,
    "metrics_summary": 3,
    "compute": 2,
    "engines": 3,
    "config_merge": 0,  # pure dict logic of the settings layers (config.py uses it)
    "config_file": 0,  # reading one TOML settings file, with its size and nesting checked (config.py)
    "config_types": 1,  # the settings' bounded aliases and enums (config.py re-exports them)
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

TRAINING = PACKAGE.parent / "training"

TRAINING_STAGES: dict[str, int] = {
    "training": -1,  # the package root holds only a docstring
    "sim": 1,  # atomic models, abTEM, worlds, the HDF5 data sets
    "evaluate": 2,  # scoring engines and baselines on simulated test splits
    "train": 3,  # training presets, the loop, export (validates with evaluate.metrics)
    "recipe": 4,  # the GPU recipe: calls sim, train and evaluate
    "cli": 5,  # sbd-train
    "samples": 6,  # `python -m training.samples`: the documented entry of sim.samples
    "console": 6,  # the `sbd-train` console entry: imports cli inside its Ctrl-C handler
}
"""Rank of each stage of ``training``: an import must go to a lower rank, or stay in its folder."""

MAX_LINES = 450


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (at any depth of its code)."""
    mods = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != package.name:
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


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    """The type gate's rule (docs/testing.md): ``# type: ignore[code]  # why`` on one line. A bare
    ignore silences every error on its line, future ones too; an unexplained one cannot be reviewed."""
    import re

    rule = re.compile(r"# type: ignore\[[a-z-]+(, ?[a-z-]+)*\]  # \S")
    bad = [
        f"{p.relative_to(PACKAGE.parent)}:{n}"
        for root in ("sbd_stream", "training", "benchmarks")
        for p in sorted((PACKAGE.parent / root).rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "type: ignore" in line and not rule.search(line)
    ]
    assert bad == []


def test_every_training_module_has_a_stage() -> None:
    groups = {group(m) for m in _modules(TRAINING)}
    assert groups <= set(TRAINING_STAGES), groups - set(TRAINING_STAGES)


def test_training_import_graph_has_no_circles() -> None:
    assert cycles(import_graph(TRAINING)) == []


def test_no_training_import_runs_back_up_the_stages() -> None:
    """sim <- evaluate <- train <- recipe <- cli: a stage imports only earlier stages or its own folder."""
    graph = import_graph(TRAINING)
    upward = [
        f"{m} -> {d}"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if group(m) != group(d) and TRAINING_STAGES[group(d)] >= TRAINING_STAGES[group(m)]
    ]
    assert upward == []


def test_no_training_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(TRAINING)): n
        for p in TRAINING.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_sbd_stream_never_imports_training() -> None:
    hits = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(), str(p)))
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "training"
        )
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "training" for a in node.names))
    ]
    assert hits == []
