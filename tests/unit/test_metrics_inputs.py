"""The image-quality and atom-detection metrics refuse what they used to score silently (audit library-api,
defects 4 and 5), and the simulated-set reader says what the bundled sample lacks (defect 11)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sbd_stream.compute import quality
from training.evaluate import metrics
from training.evaluate.metrics import BLACK, INTERMEDIATE, WHITE, DetectionSpec, detect_atoms

PX = 0.24
SAMPLE = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean, estimate, centres): 49 bright columns on a vacuum of 1, and a noisy estimate of it."""
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    centres = np.array([(r, c) for r in range(30, 100, 10) for c in range(30, 100, 10)], np.float32)
    clean = np.ones((128, 128), np.float32)
    for r, c in centres:
        clean += 0.8 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.5**2))
    est = clean + np.random.default_rng(0).normal(0, 0.05, clean.shape).astype(np.float32)
    return clean, est, centres


def test_psnr_and_ssim_refuse_images_of_different_shapes():
    """Before: (128, 128) against (128, 1) broadcast into 15.8 dB, and a (W,) row into 16.2 dB."""
    clean, est, _ = _pair()
    with pytest.raises(
        ValueError, match=r"psnr\(clean, estimate\): clean \(128, 128\) and estimate \(128, 1\)"
    ):
        metrics.psnr(clean, est[:, :1])
    with pytest.raises(
        ValueError, match=r"psnr\(estimate, truth\): estimate \(128,\) and truth \(128, 128\)"
    ):
        quality.psnr(est[0], clean)
    with pytest.raises(
        ValueError, match=r"ssim\(clean, estimate\): clean \(128, 128\) and estimate \(128, 1\)"
    ):
        metrics.ssim(clean, est[:, :1])
    with pytest.raises(ValueError, match=r"takes one 2-D image each, got \(3, 128, 128\)"):
        metrics.ssim(np.stack([clean] * 3), np.stack([est] * 3))
    with pytest.raises(ValueError, match="at least 7 x 7"):
        metrics.ssim(clean[:5, :5], est[:5, :5])


def test_metrics_take_lists_and_tensors_and_keep_their_documented_argument_order():
    clean, est, _ = _pair()
    db = metrics.psnr(clean, est)
    assert quality.psnr(est, clean) == pytest.approx(db)  # the same number in each function's own order
    assert metrics.psnr(est, clean) != pytest.approx(db)  # the range comes from the first argument
    assert metrics.psnr(torch.from_numpy(clean), torch.from_numpy(est)) == pytest.approx(db)
    assert metrics.psnr(clean.tolist(), est.tolist()) == pytest.approx(db)
    s = metrics.ssim(clean, est)
    assert metrics.ssim(torch.from_numpy(clean), est.tolist()) == pytest.approx(s)
    assert metrics.ssim([[1.0] * 10] * 10, [[1.0] * 10] * 10) == pytest.approx(1.0)


def test_detect_atoms_takes_only_the_two_polarities_and_a_finite_image():
    clean, _, _ = _pair()
    spec = DetectionSpec(pixel_size_A=PX, threshold=0.05)
    assert len(detect_atoms(clean, WHITE, spec)) == 49
    assert len(detect_atoms(clean, np.int8(WHITE), spec)) == 49  # a contrast array's value
    assert len(detect_atoms(2.0 - clean, BLACK, spec)) == 49
    for bad in (INTERMEDIATE, -1, "dark", "bright", True, 2.0):  # each was taken as white
        with pytest.raises(ValueError, match=r"polarity must be metrics.WHITE \(2\) or metrics.BLACK \(0\)"):
            detect_atoms(clean, bad, spec)  # type: ignore[arg-type]
    nan = clean.copy()
    nan[5] = math.nan  # gave 0 detections, so recall 0, silently
    with pytest.raises(ValueError, match=r"image has 128 non-finite \(NaN or Inf\) pixel"):
        detect_atoms(nan, WHITE, spec)
    with pytest.raises(ValueError, match=r"one 2-D image, got \(2, 128, 128\)"):
        detect_atoms(np.stack([clean, clean]), WHITE, spec)


def test_detection_spec_refuses_settings_that_cannot_match():
    for bad in (
        dict(match_A=-1.0),  # F1 = 0 on a perfect image
        dict(match_A=0.0),
        dict(sigma_A=(0.6, 0.3)),  # reversed range
        dict(sigma_A=(0.0, 0.3)),
        dict(num_sigma=0),
        dict(overlap=1.5),
        dict(border_px=-1),
        dict(threshold=math.inf),
    ):
        with pytest.raises(ValidationError):
            DetectionSpec(pixel_size_A=PX, **bad)
    DetectionSpec(pixel_size_A=PX, sigma_A=(0.4, 0.4))  # one scale is a range too
    clean, _, centres = _pair()
    cols = {
        "xy": centres,
        "is_surface": np.zeros(len(centres), bool),
        "contrast": np.full(len(centres), WHITE, np.int8),
        "species": np.full(len(centres), 78, np.uint8),
    }
    scores = metrics.detection_scores(clean.tolist(), cols, DetectionSpec(pixel_size_A=PX, threshold=0.05))
    assert scores["bulk"]["f1"] == pytest.approx(1.0)


def test_the_reader_says_the_bundled_sample_is_not_a_full_set():
    """Before: h5py's KeyError "object 'task_key' doesn't exist", deep in a traceback."""
    from training.sim.dataset import SimulatedDataset

    with pytest.raises(ValueError) as err:
        SimulatedDataset(SAMPLE)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{SAMPLE} is a demo-samples bundle, not a full sbd-stream-simulated set")
    assert "meta/task_key" in msg and "columns/ (all of it)" in msg and "tasks/ (all of it)" in msg
    assert "h5py" in msg  # what to do instead
