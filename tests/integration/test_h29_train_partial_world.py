"""Training on a world still being simulated: a test split with no images yet is no crash.

Found (session 29, a user's run): ``sbd-train simulate --preset mini --max-tasks 6`` then ``sbd-train train
--engine-dir E`` trained, exported the engine and then ended in an ``IndexError`` traceback, exit status 1,
while putting the test metrics into the card: the splits are drawn over the world's plan (docs/training.md,
"Splits over the plan"), so the first tasks hold train and validation models only, and ``load_items`` read
``idx[0]`` of an empty test split. The documented contract is one line and status 2 for a bad input
(``error:``), and a usable engine stays usable: the export now says in one ``warning:`` line that the card
has no test metrics yet (and how to add them), and the tables refuse an empty split in one ``error:`` line.

The file is written with the ``mini`` world's real attributes (its plan decides the splits) and small
Gaussian-blob images, so no abTEM run is needed; the command is the real console entry in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.sim.dataset import EmptySplit, ImageRecord, SimulatedDatasetWriter, TaskResult
from training.sim.splits import SplitSpec
from training.sim.worlds import WORLDS, file_attrs

pytestmark = pytest.mark.integration  # real processes

# the mini world's first structures in task order: s000 is a validation model, s001 / s003 train models;
# its test models (s002, s005, s006) are not simulated yet
STRUCTURES = ("s000-PtNp1-D0", "s001-PtNp2-D0", "s003-PtNp1-D1")
SIZE = 64


def _image(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A vacuum of 1 with a few bright Gaussian columns, and their ground truth."""
    xy = rng.uniform(12, SIZE - 12, (8, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.ones((SIZE, SIZE), np.float32)
    for r, c in xy:
        img += 0.5 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 8.0)
    cols = {
        "xy": xy,
        "is_surface": np.zeros(len(xy), bool),
        "contrast": np.full(len(xy), 2, np.int8),
        "species": np.full(len(xy), 78, np.uint8),
        "n_atoms": np.full(len(xy), 5, np.int16),
    }
    return img, cols


def _partial_mini(path: Path) -> Path:
    world = WORLDS["mini"]
    with SimulatedDatasetWriter(path, (SIZE, SIZE), file_attrs(world)) as w:
        for s, sid in enumerate(STRUCTURES):
            rng = np.random.default_rng(s)
            task = TaskResult(key=f"{sid}-tx0-ty0", structure={"structure_id": sid})
            for k in range(4):
                img, cols = _image(rng)
                meta = {
                    "structure_id": sid,
                    "task_key": task.key,
                    "particle_class": sid.split("-")[1],
                    "defect_class": sid.split("-")[2],
                    "contrast_class": 2,
                    "thickness_nm": 3.0,
                    "tilt_x_deg": 0.0,
                    "tilt_y_deg": 0.0,
                    "defocus_nm": float(k),
                    "pixel_size_A": world.pixel_size_A(),
                    "dose": world.dose,
                }
                task.images.append(ImageRecord(clean=img, meta=meta, columns=cols))
            w.append_task(task)
    return path


def test_tables_refuse_an_empty_test_split_naming_file_and_cure(tmp_path: Path) -> None:
    from training.evaluate.tables import load_items

    data = _partial_mini(tmp_path / "mini.h5")
    with pytest.raises(EmptySplit, match=r"test split holds no images.*sbd-train simulate --preset mini"):
        load_items(data, SplitSpec(), "test", 0, None)  # was: IndexError on idx[0]


def test_train_with_engine_dir_on_a_partial_world_exports_and_warns(tmp_path: Path) -> None:
    data = _partial_mini(tmp_path / "mini.h5")
    engine = tmp_path / "engine"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(tmp_path / "runs")]
    args += ["--engine-dir", str(engine), "--device", "cpu", "--threads", "1", "--max-steps", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "training.console", *args],
        capture_output=True,
        text=True,
        env=os.environ | {"NO_COLOR": "1"},
        timeout=300,  # a hang fails the test, never the suite
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # was 1, an IndexError traceback
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr[-2000:]
    assert "no test metrics" in warnings[0] and "test split holds no images" in warnings[0]
    assert f"sbd-train export {tmp_path / 'runs' / 'tiny'} --engine-dir {engine}" in warnings[0]
    assert "Traceback" not in proc.stderr
    card = json.loads((engine / "card.json").read_text())
    assert not card.get("metrics")  # the engine is there, usable, without test metrics
    assert (engine / "model.onnx").is_file()
