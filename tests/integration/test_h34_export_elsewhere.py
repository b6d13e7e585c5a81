"""``sbd-train export RUN`` from another folder than the one the run trained in.

Found (docs audit h34): a run's config names its data set as given, often relative (``data/paper.h5``);
the card's dose and pixel size of a stopped run are read from it, so an export from elsewhere failed
``error: data/paper.h5: no such file`` even with ``--data /abs/paper.h5`` and ``--no-evaluate-test``.
Now ``--data`` stands in for it, and without ``--data`` the line says why and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.sim.synthetic_data import write_synthetic
from training.train.loop import train
from training.train.presets import preset_config

pytestmark = pytest.mark.integration  # a real (3-step) training run, real engine files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the run, its data set's absolute path), trained in its own folder with a relative data path."""
    root = tmp_path_factory.mktemp("trained-here")
    write_synthetic(root / "data" / "a.h5", n_structures=6, per_structure=3, size=64)
    before = Path.cwd()
    os.chdir(root)
    try:
        cfg = preset_config("tiny", data="data/a.h5", out_dir="runs", threads=1, max_steps=3)
        train(cfg, resume=True)
    finally:
        os.chdir(before)
    # a run stopped or still going (no summary.json): its counters and the card's units are read from
    # last.pt and its data set (a finished run's summary holds them)
    (root / cfg.run_dir / "summary.json").unlink()
    yield root / cfg.run_dir, root / "data" / "a.h5"


def _export(run: Path, engine_dir: Path, *extra: str):
    args = ["export", str(run), "--engine-dir", str(engine_dir), "--no-evaluate-test", *extra]
    return CliRunner().invoke(app, args, env={"SBD_TRACEBACK": ""})


def test_export_elsewhere_takes_data_for_the_runs_data_set(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = run
    assert not Path("data/a.h5").exists()  # the run's relative path names nothing from here
    res = _export(run_dir, tmp_path / "eng", "--data", str(data))
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "eng" / "card.json").read_text())
    assert card["pixel_size_A"] > 0 and card["dose_e_per_A2"] > 0


def test_export_elsewhere_without_data_says_why(run: tuple[Path, Path], tmp_path: Path) -> None:
    res = _export(run[0], tmp_path / "eng")
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().splitlines() == [
        "error: the run's data set data/a.h5 is not found from here (a path relative to the folder the run "
        "was trained in): run export there, or pass --data with that data set's path"
    ], res.stderr
    assert not (tmp_path / "eng").exists()
