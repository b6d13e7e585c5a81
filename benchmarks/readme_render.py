"""Helpers the README renderers share: reading a results file and formatting its numbers one way.

A renderer reads only what the measuring code wrote under ``benchmarks/results/``; a missing file raises
``FileNotFoundError``, which ``readme_tables`` reports and answers by leaving the table as it is.
"""

from __future__ import annotations

import hashlib
import json
import shlex
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


ENGINES = ROOT / "engines"
CLONE_NOTE = "not in a clone: `benchmarks/engines/` is git-ignored"


def engine_today(name: str, engines: Path = ENGINES) -> str | None:
    """``name@sha256[:12]`` of the engine's ``model.onnx`` in this tree (as ``engine_id`` names it), None
    where this tree has no such engine."""
    onnx = engines / name / "model.onnx"
    return f"{name}@{hashlib.sha256(onnx.read_bytes()).hexdigest()[:12]}" if onnx.is_file() else None


def recorded_engine(d: dict[str, Any]) -> str | None:
    """The ``name@hash`` a results file measured: its ``engine_id``, else the id worked out afterwards
    from the run's commit (``engine_id_at_commit``), else None (only a name was recorded)."""
    rid = d.get("engine_id") or (d.get("engine_id_at_commit") or {}).get("engine_id")
    return str(rid).split("/")[0] if rid else None


def command_engine(cmd: str, default: str) -> str:
    """The engine name a benchmark command loads today: its ``--model`` (a path's last part), else
    ``default`` (the benchmark's default engine in this tree)."""
    args = shlex.split(cmd)
    for i, a in enumerate(args):
        if a == "--model" and i + 1 < len(args):
            return Path(args[i + 1]).name
        if a.startswith("--model="):
            return Path(a.split("=", 1)[1]).name
    return default


def engine_label(d: dict[str, Any], default: str, engines: Path = ENGINES) -> str:
    """Which engine a speed table measured, and, when the command that opens it would load other weights
    today (the default engine changed, or the engine was retrained), says so with the run's commit:
    a number measured on a retired engine must not pass for today's."""
    rid = recorded_engine(d)
    name = rid.split("@")[0] if rid else Path(str(d.get("engine") or "?")).name
    loads = command_engine(command(d), default)
    today = engine_today(loads, engines)
    commit = (d.get("machine") or {}).get("git") or d.get("git") or "?"
    if today is None and engine_today(name, engines) is None:
        return f"engine `{rid or name}` ({CLONE_NOTE})"
    if rid is None:
        return f"engine `{name}` (weights not recorded; measured at commit `{commit}`)"
    if rid == today:
        return f"engine `{rid}`"
    now = f"`{today}`" if today else f"`{loads}`, which this tree does not hold"
    return (
        f"engine `{rid}` (**a retired engine**: measured at commit `{commit}`; the command loads {now} today)"
    )
