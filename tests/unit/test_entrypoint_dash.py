"""deploy/entrypoint.sh under dash, /bin/sh of the Ubuntu-based TensorRT image the container runs on.

Why: the script is written for no arguments (``${1:-serve}``) but did ``shift || true``; in dash a failing
special builtin ends a non-interactive shell before ``|| true`` runs, so a container started with no
arguments built the TensorRT plan and exited 2 (``shift: can't shift that many``) instead of serving.
Stand-in ``sbd-train`` / ``sbd-stream`` scripts on PATH print their arguments, so the test sees exactly
what the entrypoint runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.sh"
DASH = shutil.which("dash")
pytestmark = pytest.mark.skipif(DASH is None, reason="dash is not installed (Debian/Ubuntu's /bin/sh)")


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint under dash with ``args``, stand-ins for the two console scripts first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("sbd-stream", "sbd-train"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "RAN {name} $*"\n')
        script.chmod(0o755)
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBD_ENGINE_DIR": "/opt/e", **env}
    return subprocess.run(
        [str(DASH), str(ENTRYPOINT), *args], capture_output=True, text=True, env=environ, timeout=30
    )


def test_no_arguments_builds_the_plan_then_serves(tmp_path: Path) -> None:
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    ran = [ln for ln in r.stdout.splitlines() if ln.startswith("RAN ")]
    assert ran == [
        "RAN sbd-train build-engine /opt/e/sbd-unet4-paper-twins --precision fp16",
        "RAN sbd-stream serve --config /etc/sbd-stream/sbd-stream.toml --model /opt/e/sbd-unet4-paper-twins",
    ]


def test_serve_passes_its_flags_and_other_commands_run_as_given(tmp_path: Path) -> None:
    r = _run(tmp_path, "serve", "--viewer", SBD_SKIP_ENGINE_BUILD="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "RAN sbd-stream serve --config /etc/sbd-stream/sbd-stream.toml --model /opt/e/sbd-unet4-paper-twins "
        "--viewer"
    ]
    r = _run(tmp_path, "sbd-stream", "info")
    assert (r.returncode, r.stdout.strip()) == (0, "RAN sbd-stream info"), r.stderr


# serve loads fp16 plans only (sbd_stream/service/build.py never passes a precision): SBD_PRECISION=fp32
# built a plan nothing used and serve compiled its fp16 plan at start as well (audit h30)
def test_only_the_precision_serve_loads_is_built(tmp_path: Path) -> None:
    r = _run(tmp_path, "serve", SBD_PRECISION="fp32")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "RAN" not in r.stdout  # neither a plan nothing would use nor a service
    assert "SBD_PRECISION=fp32" in r.stderr and "fp16" in r.stderr
    for env in ({}, {"SBD_PRECISION": "fp16"}):  # fp16, given or not: the plan serve loads, then serve
        r = _run(tmp_path, **env)
        assert r.returncode == 0, r.stderr
        assert "RAN sbd-train build-engine /opt/e/sbd-unet4-paper-twins --precision fp16" in r.stdout
    r = _run(tmp_path, "sbd-stream", "info", SBD_PRECISION="fp32")  # any other command runs as given
    assert (r.returncode, r.stdout.strip()) == (0, "RAN sbd-stream info"), r.stderr
