"""With CI=true a skip for something `.ci/run` installs fails the run; a GPU skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from ci_require import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
"""

CASES = """
import pytest
from ci_require import ci_provided, require_module, require_program

def test_module():
    require_module("no_such_module_sbd", "an extra that is not installed")

def test_program():
    require_program("no-such-program-sbd", reason="a Debian package that is not installed")

@pytest.mark.skipif(True, reason=ci_provided("chromium not installed"))
def test_marker():
    pass

@pytest.mark.skipif(True, reason="needs a GPU with TensorRT")
def test_gpu():
    pass

def test_runs():
    pass
"""

MODULE_LEVEL = """
from ci_require import require_module
require_module("no_such_module_sbd", "selenium is in the dev extra")

def test_never_collected():
    pass
"""


def _run(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(CASES)
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return r.returncode, r.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_they_skip(tmp_path: Path, ci: str | None) -> None:
    rc, out = _run(tmp_path, ci)
    assert rc == 0 and "5 skipped" in out and "1 passed" in out and "failed" not in out, out


def test_in_ci_they_fail_and_the_gpu_skip_stays(tmp_path: Path) -> None:
    rc, out = _run(tmp_path, "true")
    assert rc != 0
    for name in ("test_module", "test_program"):
        assert f"FAILED test_cases.py::{name}" in out, out
    assert "ERROR test_cases.py::test_marker" in out, out  # a skipif marker fails at setup
    assert "ERROR test_module_level.py" in out, out  # a module-level skip fails collection (stops a run)
    assert "SKIPPED [1] test_cases.py" in out and "needs a GPU with TensorRT" in out, out
    assert "must run, not skip" in out
    assert "1 passed" in out
