"""When, where and with what a results file was measured: date, commit, load and library versions.

Why: a speed number depends on the machine's load and on the code and libraries that ran, and the
README's benchmark tables are rendered from these files. A file that records only the Python version
and the core count (``sbd-stream demo --json-out``, issue audit 26) cannot show that its "quiet machine"
was quiet, nor which commit or onnxruntime produced it. ``sbd-stream demo`` and ``benchmarks/common.py``
both take their metadata from here, so every results file says the same things the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "pyzmq": "pyzmq",
    "h5py": "h5py",
}
"""Library name in the results file -> its distribution name."""

SOURCE_TREE = Path(__file__).resolve().parents[2]
NOT_A_CHECKOUT = "not run from a git checkout (an installed package): no commit to record"


def utc_now() -> str:
    """The current time as UTC ISO 8601 to the second (``2026-12-06T14:03:11Z``): comparable as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): how busy the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the numbers depend on (None: not installed)."""
    out: dict[str, str | None] = {}
    for key, dist in LIBRARIES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_state(tree: Path = SOURCE_TREE) -> dict[str, Any]:
    """``{"git": short commit, "git_dirty": bool}`` of the checkout the code was run from (dirty: a tracked
    file outside ``benchmarks/results`` differs from the commit); outside a
    checkout ``git`` is "" and ``git_note`` says why (the file must not pass for a clean commit)."""

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", "-C", str(tree), *args], capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    if not (tree / ".git").exists():  # e.g. site-packages inside a venv inside some checkout: not ours
        return {"git": "", "git_dirty": None, "git_note": NOT_A_CHECKOUT}
    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return {"git": "", "git_dirty": None, "git_note": NOT_A_CHECKOUT}
    # read-only: exit 1 when tracked files differ; results files are what a benchmark session writes
    # one after another, so they do not make the code that measured "dirty"
    diff = git("diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results")
    dirty = None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1
    return {"git": head.stdout.strip(), "git_dirty": dirty}


def run_started() -> dict[str, Any]:
    """What to take before measuring: the start time and the load average then."""
    return {"started": utc_now(), "load_avg_start": load_average()}


def run_info(started: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields of a results file: ``date`` (UTC, when written), ``started``, the load average at
    start and end, the commit (with a dirty flag) and the library versions; ``machine`` as before."""
    return {
        "date": utc_now(),
        "started": started.get("started"),
        "load_avg": {"start": started.get("load_avg_start"), "end": load_average()},
        **git_state(),
        "versions": versions(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": platform.machine()},
    }
