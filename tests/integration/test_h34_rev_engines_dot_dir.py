"""``sbd-train export RUN --engine-dir .`` names the engine after the current folder, as any other
folder, and a second export there replaces it without ``--overwrite`` (an earlier export of the same
engine), and the folder stays the process's current folder.

Found (session 34 review): the engine's name was ``Path('.').name``, '': the card took the run's name
instead of the folder's, and the next export into ``.`` was refused with "holds the engine 'tiny', not
''"; ``train --engine-dir .`` and ``gpu-recipe`` checked the folder under that same empty name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_runs import tiny_run
from typer.testing import CliRunner

from sbd_stream.engines.card import load_card, load_torch_model
from training.cli import app

pytestmark = pytest.mark.integration  # a real (3-step) training run, real engine files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("dot"))


@pytest.mark.parametrize(("given", "cwd"), [(".", "."), ("..", "plots")])
def test_export_into_the_current_folder_names_it_and_replaces_its_own_export(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, cwd: str
) -> None:
    folder = tmp_path / "my-engine"
    (folder / cwd).mkdir(parents=True)
    monkeypatch.chdir(folder / cwd)
    args = ["export", str(run), "--engine-dir", given, "--no-evaluate-test"]
    # the first into a folder that may hold plots/ (--overwrite); the second replaces an earlier export
    # of the same engine, which needs no --overwrite
    for extra in (["--overwrite"], []):
        res = CliRunner().invoke(app, [*args, *extra], env={"SBD_TRACEBACK": ""})
        assert res.exit_code == 0, res.output
        assert load_card(folder).name == "my-engine"
    assert Path(os.getcwd()) == (folder / cwd).resolve()  # still there: the folder was not replaced
    assert {p.name for p in folder.iterdir()} - {"plots"} == {"card.json", "model.onnx", "model.pt"}
    load_torch_model(folder)
