"""The batch stage's orientation cap is logged once per evaluation, not once per stage.

Found (session 29, a user's engine trained with flips only, the ``default`` preset): ``sbd-train
evaluate-images`` printed "engine c1 was trained in 2 orientation(s): averaging over 2 instead of 8"
twice (a probe stage and the nominal dose's stage, ``training.evaluate.detector.sbd_detector_method``),
and a dose curve once more per dose. docs/training.md ("Offline") says the batch stage logs it once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_engine

from training.evaluate.detector import sbd_detector_method


@pytest.fixture
def flips_only_engine(tmp_path: Path) -> Path:
    engine = make_tiny_engine(tmp_path / "flips", pixel_size_A=0.24, dose_e_per_A2=7.2 / 0.24**2)
    card = json.loads((engine / "card.json").read_text())
    card["training"] = {"augment": {"flips": True, "right_angles": False}}  # as the CPU presets train
    (engine / "card.json").write_text(json.dumps(card))
    return engine


def test_the_cap_is_logged_once_over_doses(flips_only_engine: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sbd_stream.service.batch")
    run, info = sbd_detector_method(flips_only_engine, "torch", 0.24, 7.2, device="cpu", orientations=8)
    counts = np.random.default_rng(0).poisson(7.2, (64, 64)).astype(np.float32)
    for dose in (7.2, 3.6, 14.4):  # the nominal dose, then two others, as dose-curve runs them
        out = run(counts * dose / 7.2, dose)
        assert out.shape == counts.shape and np.isfinite(out).all()
    caps = [r for r in caplog.records if "orientation(s): averaging over" in r.getMessage()]
    assert len(caps) == 1, [r.getMessage() for r in caps]  # was 4: the probe and one per dose
    assert info["orientations"] == 4  # the four flips (test_h30_klein_four.py)
