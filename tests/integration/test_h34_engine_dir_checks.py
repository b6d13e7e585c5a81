"""``train --engine-dir``, ``fov-study --train`` and ``gpu-recipe``'s export step follow ``export``'s rule
for the engine folder (new, empty or an earlier export of the same engine, else one ``error:`` line,
status 2, unless ``--overwrite``), checked before any training starts.

Found (session 34, audit): only ``sbd-train export`` checked its folder (session 33); these three wrote
model.pt, model.onnx and card.json into whatever folder they were given, after the training that took
an hour (another engine's weights replaced under its card, or an engine mixed into unrelated files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.sim.synthetic_data import write_synthetic
from training.train.loop import train
from training.train.presets import preset_config

pytestmark = pytest.mark.integration  # real (3-step) training runs, real engine files

TAIL = (
    "or pass --overwrite to write the engine there anyway (model.pt, model.onnx, card.json replaced, other "
    "files kept)"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "a.h5", n_structures=6, per_structure=3, size=64)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"SBD_TRACEBACK": ""})


def _taken(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("a researcher's notes\n")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_train_refuses_a_taken_engine_dir_before_training_and_writes_it_with_overwrite(
    data: Path, tmp_path: Path
) -> None:
    folder = _taken(tmp_path / "results")
    runs = tmp_path / "runs"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(runs), "--threads", "1"]
    args += ["--max-steps", "3", "--engine-dir", str(folder), "--no-evaluate-test"]
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: --engine-dir {folder}: holds 1 other entries (notes.txt); choose another folder, {TAIL}"
    ], res.stderr
    assert not runs.exists()  # refused before the run began, not after its training
    assert _files(folder) == {"notes.txt": b"a researcher's notes\n"}

    res = _invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (
        f"after training: writing the engine 'results' into {folder} (--overwrite), which held notes.txt"
        in res.stdout
    ), res.stdout
    assert set(_files(folder)) == {"notes.txt", "model.pt", "model.onnx", "card.json"}
    assert (folder / "notes.txt").read_text() == "a researcher's notes\n"


def test_fov_study_train_checks_every_engine_folder_before_training_any(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # fov-study writes benchmarks/engines/<preset's name> and runs/ here
    name = preset_config("fov245").name  # the second of three: the first is not trained either
    folder = _taken(Path("benchmarks/engines") / name)
    res = _invoke("fov-study", "--train", "--data", str(data), "--max-minutes", "0.01")
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: --train's folder {folder}: holds 1 other entries (notes.txt); move its files away, {TAIL}"
    ], res.stderr
    assert not Path("runs").exists() and sorted(p.name for p in folder.parent.iterdir()) == [name]
    assert _files(folder) == {"notes.txt": b"a researcher's notes\n"}


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run named ``cand`` in ``<root>/runs`` (the recipe's runs folder, cwd-relative)."""
    cfg = preset_config(
        "tiny", name="cand", data=str(data), out_dir=str(tmp_path_factory.mktemp("r") / "runs"), threads=1
    )
    train(cfg.model_copy(update={"max_steps": 3}), resume=True)
    return cfg.run_dir


def test_gpu_recipe_refuses_a_taken_engine_dir_before_any_step_and_exports_with_overwrite(
    data: Path, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(run.parent.parent)  # runs/cand
    folder = _taken(tmp_path / "other")
    results = tmp_path / "results"
    args = ["gpu-recipe", "--steps", "export", "--name", "cand", "--data", str(data), "--allow-cpu"]
    args += ["--device", "cpu", "--engine-dir", str(folder), "--results", str(results), "--no-card-metrics"]

    res = _invoke(*args, "--dry-run")  # the plan says so, and runs nothing
    assert res.exit_code == 0, res.output
    assert f"WOULD REFUSE: --engine-dir {folder}: holds 1 other entries (notes.txt)" in res.stdout, res.stdout

    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: --engine-dir {folder}: holds 1 other entries (notes.txt); choose another folder, {TAIL}"
    ], res.stderr
    assert not results.exists()  # no step ran (no gpu_recipe.json)
    assert _files(folder) == {"notes.txt": b"a researcher's notes\n"}

    res = _invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert f"export step: writing the engine 'other' into {folder} (--overwrite), which held notes.txt" in (
        res.stdout
    )
    assert set(_files(folder)) == {"notes.txt", "model.pt", "model.onnx", "card.json"}
    res = _invoke(*args)  # a rerun replaces its own export: the ordinary case, no --overwrite needed
    assert res.exit_code == 0, res.output
    assert f"export step: replacing the engine 'other' in {folder} (an earlier export" in res.stdout
