"""``sbd-stream info`` in a copy of the package outside any source tree, as a wheel installs it.

Why: a non-editable install looked for engines in ``<site-packages>/engines``, which never exists, and
``info`` then listed ``"engines": []`` with exit 0. The package is copied on its own into a temporary
folder (no ``engines/`` beside it) and run by a real interpreter: with no engines anywhere ``info`` says
so in one line naming ``SBD_ENGINE_DIR`` (exit 2); with engines under ``<user base>/share/sbd-stream/
engines`` (where ``pip install --user`` of the wheel puts them) it lists them without the variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only a copy of ``sbd_stream`` (site-packages of a wheel install)."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "sbd_stream", site / "sbd_stream", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _info(site: Path, user_base: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SBD_ENGINE_DIR", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(site), "PYTHONUSERBASE": str(user_base), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "sbd_stream", "info"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_info_without_engines_says_so_in_one_line(installed: Path, tmp_path: Path) -> None:
    shared = Path(sys.prefix) / "share" / "sbd-stream" / "engines"
    if shared.exists():
        pytest.skip(f"{shared} exists (the wheel is installed into this Python)")
    r = _info(installed, tmp_path / "userbase", tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no engine folder: "), r.stderr
    assert "SBD_ENGINE_DIR" in lines[0] and str(shared) in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_info_finds_the_engines_a_wheel_put_under_share(installed: Path, tmp_path: Path) -> None:
    user_base = tmp_path / "userbase"
    shared = user_base / "share" / "sbd-stream" / "engines"
    shutil.copytree(ROOT / "engines" / "sbd-unet3s2-paper-twins", shared / "sbd-unet3s2-paper-twins")
    r = _info(installed, user_base, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine_root"] == str(shared)
    assert [e["name"] for e in out["engines"]] == ["sbd-unet3s2-paper-twins"]
    assert "error" not in out["engines"][0]
