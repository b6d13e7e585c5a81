"""Helpers shared by the benchmarks: machine description, JSON results, printed tables.

Every results file says when (UTC), at which commit (and whether the tree was dirty), under what load
(at the start of the process and at the end) and with which library versions it was measured: the
fields come from ``sbd_stream.cli.run_info``, the same ones ``sbd-stream demo --json-out`` writes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from sbd_stream.cli.run_info import git_state, run_info, run_started
from sbd_stream.invocation import invocation

RESULTS = Path(__file__).resolve().parent / "results"
STARTED = run_started()
"""Start time and load average when the benchmark's process imported this module (before measuring)."""


def machine() -> dict[str, Any]:
    import torch  # here, not at import: the network benchmarks (bench_curve, bench_dectris) need no torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info.update(git_state())  # git ("" outside a checkout, with git_note saying so) and git_dirty
    return info


def results_dir() -> Path:
    """``benchmarks/results``, or ``$SBD_BENCH_RESULTS`` (smoke tests write there, not over real numbers)."""
    env = os.environ.get("SBD_BENCH_RESULTS")
    return Path(env) if env else RESULTS


def write_result(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """``payload`` with the command and machine to ``results_dir()/<name>.json``, or to ``path``."""
    path = path or results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        **run_info(STARTED),
        "command": "python -m " + invocation(f"benchmarks.{_module(name)}"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def out_path(file_name: str, given: Path | None = None) -> Path:
    """``given`` (an explicit ``--out``), else ``results_dir()/file_name``: a benchmark that names its own
    file must still honour ``$SBD_BENCH_RESULTS``, or a sizing run overwrites the committed numbers."""
    return given if given is not None else results_dir() / file_name


def stamped(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with what ``write_result`` adds (benchmark, date, started, load at start and end,
    commit, versions), for a benchmark that writes its own file; the payload's keys win, and its
    ``machine`` is merged over the common one (README renders both)."""
    info = run_info(STARTED)
    mach = {**info["machine"], **payload.get("machine", {})}
    return {"benchmark": name, **info, **payload, "machine": mach}


def _module(name: str) -> str:
    """The benchmark module that is running (``python -m benchmarks.X`` runs ``benchmarks/X.py``), else
    ``name``: a module may name its results file otherwise (``gpu_session_report`` writes
    ``gpu_session_<tag>.json``), and the command recorded must be one that exists."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.suffix == ".py" and script.parent.name == "benchmarks":
        return script.stem
    return name


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)
