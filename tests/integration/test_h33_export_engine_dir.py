"""``sbd-train export --engine-dir DIR`` writes only into a new or empty folder or over an earlier export of
the same engine; any other folder is one error line (status 2, nothing written) unless ``--overwrite``,
and replacing an engine is said.

Found (session 33, audit): an export into a folder that already held other files wrote model.pt,
model.onnx and card.json there without a word: a typo mixed an engine into an unrelated folder, or
replaced another engine's weights (a copy of engine A in folder B, exported over, silently became B).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers_runs import tiny_run
from typer.testing import CliRunner

from training.cli import app

pytestmark = pytest.mark.integration  # a real (3-step) training run, real engine files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("export"))


def _export(run: Path, engine_dir: Path, *extra: str):
    args = ["export", str(run), "--engine-dir", str(engine_dir), "--no-evaluate-test", *extra]
    return CliRunner().invoke(app, args, env={"SBD_TRACEBACK": ""})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_folder_of_other_files_is_refused_unless_overwrite(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("a researcher's notes\n")
    res = _export(run, folder)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: --engine-dir {folder}: holds 1 other entries (notes.txt); choose another folder, or pass "
        "--overwrite to write the engine there anyway (model.pt, model.onnx, card.json replaced, other "
        "files kept)"
    ], res.stderr
    assert _files(folder) == {"notes.txt": b"a researcher's notes\n"}  # nothing written

    res = _export(run, folder, "--overwrite")
    assert res.exit_code == 0, res.output
    assert f"writing the engine 'results' into {folder} (--overwrite), which held notes.txt" in res.stdout
    assert set(_files(folder)) == {"notes.txt", "model.pt", "model.onnx", "card.json"}
    assert (folder / "notes.txt").read_text() == "a researcher's notes\n"  # kept


def test_another_engine_is_not_replaced_and_the_same_one_is_replaced_saying_so(
    run: Path, tmp_path: Path
) -> None:
    first = tmp_path / "eng"
    res = _export(run, first)
    assert res.exit_code == 0, res.output
    assert "replacing" not in res.stdout and "--overwrite" not in res.stdout  # a new folder: nothing to say

    res = _export(run, first)  # retraining into its own folder: the ordinary case, said in one line
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == (
        f"replacing the engine 'eng' in {first} (an earlier export: its model.pt, model.onnx, card.json)"
    ), res.stdout

    other = tmp_path / "other"  # engine 'eng' copied to a folder of another name: not this export's
    shutil.copytree(first, other)
    before = _files(other)
    res = _export(run, other)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: --engine-dir {other}: holds the engine 'eng', not 'other'; choose another folder"
    ), res.stderr
    assert _files(other) == before

    res = _export(run, other, "--overwrite")
    assert res.exit_code == 0, res.output
    assert f"replacing the engine 'eng' in {other} by 'other' (--overwrite)" in res.stdout


def test_a_file_as_engine_dir_is_one_line_even_with_overwrite(run: Path, tmp_path: Path) -> None:
    path = tmp_path / "engine"
    path.write_text("not a folder\n")
    for extra in ((), ("--overwrite",)):
        res = _export(run, path, *extra)
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == f"error: --engine-dir {path}: a file, not a folder", res.stderr
    assert path.read_text() == "not a folder\n"
