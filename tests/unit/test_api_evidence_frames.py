"""The Python API says how many evidence frames scored each frame, as the ``llr`` header's
``meta.evidence_frames`` does (docs/likelihood.md: a frame's LLR scales with that number).

Why: ``FrameDenoiser.process`` returned the maps and column tables without it, so a notebook could not
tell frame 0's LLR (its own counts) from frame 5's (scored on 4 more frames' counts), nor which frames
had blank or off-dose evidence left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.frames import FrameDenoiser


@pytest.fixture(scope="module")
def fd(binning_engine_dir: Path) -> FrameDenoiser:
    return FrameDenoiser(
        0.060,
        counts_per_px=0.45,
        orientations=1,
        batch_frames=3,  # evidence crosses the batches: the count must too
        likelihood=LikelihoodSettings(enabled=True, evidence_frames=4),
        denoiser=Denoiser.load("torch", binning_engine_dir, device="cpu"),
    )


def test_each_frame_says_how_many_earlier_frames_scored_it(fd: FrameDenoiser) -> None:
    frames = np.random.default_rng(0).poisson(0.45, (7, 128, 128)).astype(np.uint16)
    res = fd.process(frames)
    assert res.evidence_frames is not None
    assert res.evidence_frames.tolist() == [0, 1, 2, 3, 4, 4, 4]  # min(i, N) within one call


def test_a_blank_frame_is_left_out_of_the_evidence_and_not_counted(fd: FrameDenoiser) -> None:
    frames = np.random.default_rng(1).poisson(0.45, (4, 128, 128)).astype(np.uint16)
    frames[1] = 0  # no beam
    res = fd.process(frames)
    assert res.blank is not None and res.blank.tolist() == [False, True, False, False]
    assert res.evidence_frames is not None
    assert res.evidence_frames.tolist()[2:] == [1, 2]  # frame 1 scored nothing into frames 2 and 3


def test_without_likelihood_there_is_no_count(binning_engine_dir: Path) -> None:
    off = FrameDenoiser(
        0.060, counts_per_px=0.45, orientations=1,
        denoiser=Denoiser.load("torch", binning_engine_dir, device="cpu"),
    )  # fmt: skip
    assert off.process(np.ones((2, 64, 64), np.uint16)).evidence_frames is None
