"""Helpers the README renderers share: reading a results file and formatting its numbers one way.

A renderer reads only what the measuring code wrote under ``benchmarks/results/``; a missing file raises
``FileNotFoundError``, which ``readme_tables`` reports and answers by leaving the table as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def source(d: dict[str, Any], name: str) -> str:
    """The line every table opens with: the command that measured it and the file it wrote."""
    return f"`{d['command']}` (`benchmarks/results/{name}`"


def command(d: dict[str, Any]) -> str:
    """The command that wrote a results file, without its free-text ``--note``."""
    return str(d["command"]).split(" --note")[0]


def pm(m: dict[str, Any], key: str, digits: int = 2, std: bool = True) -> str:
    """``mean ± std`` (or the mean alone) of one metric of a summary, "-" where it was not measured."""
    v = m.get(key)
    if v is None:
        return "-"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if std else f"{v['mean']:.{digits}f}"


def method_label(r: dict[str, Any]) -> str:
    """A Table 5.1 row's method: SBD rows in bold with their size, classical ones with their settings."""
    name = r["method"]
    if r.get("kind") == "sbd":
        return f"**{name}** ({r.get('parameters', 0) / 1000:.0f} k params)"
    if r.get("params"):
        name += " (" + ", ".join(f"{k} {v:.3g}" for k, v in r["params"].items()) + ")"
    return name


def cores(d: dict[str, Any]) -> str:
    """The machine a speed was measured on, as the results file recorded it."""
    m = d.get("machine", {})
    gpu = m.get("gpu")
    n = m.get("cpus") or d.get("cpus")
    return f"{n} cores, " + (f"GPU {gpu}" if gpu else "no GPU") if n else (f"GPU {gpu}" if gpu else "no GPU")
