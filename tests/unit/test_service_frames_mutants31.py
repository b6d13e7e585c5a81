"""The Python API's per-frame bookkeeping across its batches (a mutation round, h31).

Every test of ``FrameDenoiser.process``'s edge tally used one batch, where a frame's index in its batch
is its index in the call: a warning naming the too-bright frames by their index in the batch ("first:
[1]" for frame 3 with batches of 2) passed them, as did ``replaced`` written at the batch's index
(frame 4's hot pixel reported as frame 0's), and so did ``vacuum_not_flat`` left all False (it was
pinned nowhere through the API). Refused keywords were pinned one at a time, and each message only for
containing the keyword: a message keeping pydantic's "Value error, " prefix, or naming only the first of
two refused keywords, passed. A bfloat16 tensor (what a mixed-precision notebook holds) was not tried:
without its conversion it failed in numpy's ``TypeError``. Real engines on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.frames import FrameDenoiser

ENGINE = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet3s2-paper"


def test_frames_are_named_by_their_index_in_the_call_across_batches(
    binning_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fd = FrameDenoiser(
        0.060,
        counts_per_px=0.45,
        orientations=1,
        batch_frames=2,
        denoiser=Denoiser.load("torch", binning_engine_dir, device="cpu"),
    )
    frames = np.random.default_rng(4).poisson(0.45, (5, 128, 128)).astype(np.uint16)
    frames[3] = np.random.default_rng(5).poisson(18.0, (128, 128))  # 40x the dose: too bright, kept
    frames[4, 7, 9] = 40  # a hot pixel at 0.45 counts/px (the threshold is 27)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.edge"):
        res = fd.process(frames)
    assert res.replaced.tolist() == [0, 0, 0, 0, 1]
    said = [r.getMessage() for r in caplog.records]
    bright = [s for s in said if "not hot pixels but a dose far from the configured one" in s]
    assert len(bright) == 1 and "1 frames (first: [3])" in bright[0], said
    hot = [s for s in said if "were replaced by their frame's mean" in s]
    assert len(hot) == 1 and "1 pixels in 1 frames (first: [4])" in hot[0], said


def _columns(vacuum_rows: int, seed: int) -> np.ndarray:
    """Counts at 0.45 of a 256^2 frame: vacuum in the top ``vacuum_rows`` rows, columns 2.4 A apart below."""
    yy, xx = np.mgrid[:256, :256]
    img = np.ones((256, 256))
    for r in range(vacuum_rows + 20, 256, 40):
        for c in range(20, 256, 40):
            img += np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 6.0**2))
    return np.random.default_rng(seed).poisson(0.45 * img).astype(np.uint16)


def test_vacuum_not_flat_comes_back_for_every_batch() -> None:
    """Frames without vacuum: the blocks taken as vacuum hold specimen, not flat; one with vacuum in its
    top half is flat. In batches of 2, the flag of each frame is its own (docs/likelihood.md)."""
    fd = FrameDenoiser(
        0.060, counts_per_px=0.45, orientations=1, batch_frames=2, likelihood=True,
        denoiser=Denoiser.load("auto", ENGINE, device="cpu"),
    )  # fmt: skip
    frames = np.stack([_columns(0, 1), _columns(128, 2), _columns(0, 3)])
    res = fd.process(frames)
    assert res.vacuum_not_flat is not None and res.vacuum_not_flat.tolist() == [True, False, True]


def test_every_refused_keyword_is_named_in_one_plain_line(binning_engine_dir: Path) -> None:
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    with pytest.raises(ValueError) as err:
        FrameDenoiser(0.060, counts_per_px=0.45, orientations=3, engine="cuda", denoiser=den)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "orientations=3" in msg and "engine='cuda'" in msg and "; " in msg and "\n" not in msg
    with pytest.raises(ValueError) as both:
        FrameDenoiser(0.060, counts_per_px=0.45, dose_e_per_A2=125.0, denoiser=den)
    assert "not both" in str(both.value) and "Value error" not in str(both.value)


def test_a_bfloat16_tensor_is_denoised_as_its_float32_counts(binning_engine_dir: Path) -> None:
    fd = FrameDenoiser(
        0.060, counts_per_px=0.45, orientations=1,
        denoiser=Denoiser.load("torch", binning_engine_dir, device="cpu"),
    )  # fmt: skip
    counts = torch.from_numpy(np.random.default_rng(6).poisson(0.45, (2, 64, 64)).astype(np.float32))
    np.testing.assert_array_equal(fd(counts.to(torch.bfloat16)), fd(counts))
