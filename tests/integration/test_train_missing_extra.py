"""``sbd-train`` on an install without the ``train`` extra: one line naming the extra, exit status 2.

Why: the base package ships the ``sbd-train`` console script, but ``simulate`` and ``scenes`` need ASE
and abTEM: ``scenes`` ended in a 39-line traceback (``No module named 'ase'``), ``simulate`` failed
every Dask task with a worker traceback each and exit 1. A real ``python -m training.cli`` runs with
a ``sitecustomize`` on PYTHONPATH whose import hook reports the extra's modules as not installed (what
``import ase`` does where it is missing), so the modules of this venv are hidden from the command only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

HIDE = """
import sys

class _NotInstalled:
    '''Report {modules} as not installed, as the import system does for a module that is missing.'''

    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {modules!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""

BROKEN = "raise ModuleNotFoundError(\"No module named 'ase'\", name='ase')\n"
"""An ``ase`` package that fails at import: the command imports it itself, past the up-front check."""


def _train(tmp_path: Path, hook: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SBD_TRACEBACK", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def _hidden(tmp_path: Path, *modules: str) -> Path:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HIDE.format(modules=set(modules)))
    return hook


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["simulate", "--preset", "tiny", "--out", "t.h5", "--workers", "1"], "ase"),
        (["scenes", "--out", "sc.h5"], "ase"),
        (["simulate", "--preset", "tiny", "--out", "t.h5", "--workers", "1"], "abtem"),
    ],
)
def test_a_missing_train_module_is_one_line_naming_the_extra(
    tmp_path: Path, args: list[str], module: str
) -> None:
    line = _one_line(_train(tmp_path, _hidden(tmp_path, module), *args))
    assert line == (
        f"error: module '{module}' is not installed; this command needs the 'train' extra: "
        "pip install 'sbd-stream[train]'"
    )
    assert not list(tmp_path.glob("*.h5")), "nothing written before the check"


def test_an_import_that_fails_inside_a_command_is_one_line_too(tmp_path: Path) -> None:
    """The wrapper of every command (training/cli/errors.py ``friendly_errors``) turns it into one line."""
    stub = tmp_path / "stub" / "ase"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(BROKEN)
    line = _one_line(_train(tmp_path, stub.parent, "scenes", "--out", "sc.h5"))
    assert "module 'ase' is not installed" in line and "pip install 'sbd-stream[train]'" in line


def test_a_missing_module_of_the_project_itself_keeps_its_traceback(tmp_path: Path) -> None:
    """Only the extras' modules are a user's to install; anything else missing is a bug to report."""
    r = _train(tmp_path, _hidden(tmp_path, "training.sim.scenes"), "scenes", "--out", "sc.h5")
    assert r.returncode == 1 and "Traceback" in r.stderr + r.stdout, (r.stdout, r.stderr)


def test_a_closed_stdout_is_not_called_a_damaged_hdf5_file() -> None:
    """``sbd-train ... | head``: the reader left. It was reported as "(a damaged or truncated HDF5 file?)"."""
    from training.cli.errors import one_line

    line = one_line(BrokenPipeError(32, "Broken pipe"))
    assert "broken pipe" in line and "HDF5" not in line
