"""``sbd-train evaluate-images`` sets the dose on the vacuum: its median is ``counts_per_px``, however
little of the frame is vacuum (audit 27, mutant IG3: the whole frame's median passed, since the bundled
frames are about half vacuum and a specimen's bright-field median sits near the vacuum's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluate.images import ImageEvalConfig, prepare
from training.sim.samples import QUALITY_OUT, read_quality_frames


def test_the_vacuum_of_a_frame_that_is_mostly_support_gets_the_asked_counts(tmp_path: Path) -> None:
    images, _, px = read_quality_frames(QUALITY_OUT)
    frame = np.asarray(images[0], np.float32)[80:]  # the support, and 1/8 of the frame vacuum
    cfg = ImageEvalConfig(folder=tmp_path, pixel_size_A=px, counts_per_px=0.45)
    counts, regions = prepare(frame, cfg)
    vacuum = regions == 0
    assert 0.05 < vacuum.mean() < 0.2
    assert np.median(frame) < 0.99 * np.median(frame[vacuum])  # the support is darker than the vacuum
    assert np.median(counts[vacuum]) == pytest.approx(0.45, rel=1e-4)


def test_a_dark_lattice_under_a_strip_of_vacuum(tmp_path: Path) -> None:
    """Synthetic: vacuum at 1.0 over the top 24 rows, a lattice around 0.7 below (the frame's median)."""
    y, x = np.mgrid[:128, :128] * 0.24
    frame = np.ones((128, 128), np.float32)
    frame[24:] = 0.7 + 0.25 * np.cos(2 * np.pi * x[24:] / 3.1) * np.cos(2 * np.pi * y[24:] / 3.1)
    counts, regions = prepare(frame, ImageEvalConfig(folder=tmp_path, pixel_size_A=0.24, counts_per_px=2.0))
    vacuum = regions == 0
    assert vacuum[:16].all() and not vacuum[40:].any()
    assert np.median(counts[vacuum]) == pytest.approx(2.0, rel=1e-6)
