"""Importing the CLIs loads no numerical library: each command imports what it needs when it runs.

Why: ``sbd-stream --help`` and every command's first second would otherwise go to torch and NumPy, and
a Ctrl-C in those imports, before ``sigint_held`` guards them (``cli/app.py``), could abort the process
inside torch's pybind11 frames. A module-level ``from sbd_stream.config import ...`` in a CLI module
(session 29, ``cli/replay_offline.py``) pulled in torch through the settings' imports; only a timing
test of Ctrl-C noticed, by accident.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "h5py", "zmq", "onnxruntime")


@pytest.mark.parametrize("module", ["sbd_stream.cli", "training.console"])
def test_importing_a_cli_loads_no_numerical_library(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert res.stdout.strip() == "", f"importing {module} loaded: {res.stdout.strip()}"
