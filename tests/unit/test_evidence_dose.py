"""Evidence frames and the frames' own dose (audit 24: detector defects 2, 3; calibration defect 2).

With ``--evidence-frames N`` the dose check and ``meta.vacuum_counts`` measured the evidence sum, not the
frame; one blanked frame (or a beam step) among the evidence turned every real column of the next N frames
negative; and frames with no evidence were scored on their own counts by the evidence defaults (pattern
model, 1.25 A) that the docs call optimistic there.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchResult, BatchStage

SHAPE = (256, 256)  # 0.060 A detector pixels: 64 x 64 working pixels of 0.24 A
ENGINE = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet3s2-paper"


@pytest.fixture(scope="module")
def den() -> Denoiser:
    """The shipped live CPU engine: the tiny test engine finds no columns to score (~60 ms a frame)."""
    return Denoiser.load("auto", ENGINE, device="cpu")


def _scene(shape: tuple[int, int]) -> np.ndarray:
    """Vacuum (1) with a patch of bright Gaussian "columns" (contrast 2, 1 A apart) in the lower half."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.ones(shape)
    for r in range(shape[0] // 2 + 8, shape[0] - 8, 16):
        for c in range(8, shape[1] - 8, 16):
            img += 2.0 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 3.0**2))
    return img


def _frame(seq: int, lam: float, seed: int, shape: tuple[int, int] = SHAPE) -> Frame:
    data = np.random.default_rng(seed).poisson(lam * _scene(shape)).astype("uint16")
    return Frame(FrameHeader("acq", seq, time.time(), shape, "uint16"), data)


def _stage(den: Denoiser, **kw: object) -> BatchStage:
    return BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, **kw))


def _columns(res: BatchResult, i: int) -> np.ndarray:
    assert res.columns is not None
    return res.columns[i]


def test_a_blank_evidence_frame_is_left_out_and_counted_and_the_scores_are_those_without_it(
    den: Denoiser,
) -> None:
    """Frame 3 with evidence 2, 1 where 1 is blank: scored on frame 2 alone, exactly as if handed only it."""
    stage = _stage(den, evidence_frames=2)
    f0, f2, f3 = _frame(0, 0.45, 1), _frame(2, 0.45, 2), _frame(3, 0.45, 3)
    blank = Frame(FrameHeader("acq", 1, time.time(), SHAPE, "uint16"), np.zeros(SHAPE, "uint16"))
    res = stage.process([f3], evidence=[[f2, blank]])
    ref = stage.process([f3], evidence=[[f2]])
    assert res.evidence_frames is not None and res.evidence_frames.tolist() == [1]
    assert res.evidence_left_out is not None and res.evidence_left_out.tolist() == [1]
    assert res.likelihood is not None and ref.likelihood is not None
    np.testing.assert_array_equal(res.likelihood, ref.likelihood)
    np.testing.assert_array_equal(_columns(res, 0), _columns(ref, 0))
    both = stage.process([f3], evidence=[[f2, f0]])  # two good frames: both used, none left out
    assert both.evidence_frames.tolist() == [2] and both.evidence_left_out.tolist() == [0]  # type: ignore[union-attr]


def test_a_beam_step_among_the_evidence_is_left_out_and_a_small_one_is_scaled_by_its_dose(
    den: Denoiser,
) -> None:
    """A 2x frame is left out (outside 0.8-1.25x); a 1.15x frame is kept, the rates scaled by its dose:
    the LLR is that of the same frame at the scored frame's dose, to Poisson noise (not +15 % biased)."""
    stage = _stage(den, evidence_frames=1)
    f1 = _frame(1, 0.45, 11)
    res = stage.process([f1], evidence=[[_frame(0, 0.90, 12)]])
    assert res.evidence_frames.tolist() == [0] and res.evidence_left_out.tolist() == [1]  # type: ignore[union-attr]
    own = _stage(den).process([f1])  # none left: scored as with evidence_frames = 0
    np.testing.assert_array_equal(_columns(res, 0), _columns(own, 0))
    kept = stage.process([f1], evidence=[[_frame(0, 0.45 * 1.15, 13)]])
    assert kept.evidence_frames.tolist() == [1] and kept.evidence_left_out.tolist() == [0]  # type: ignore[union-attr]
    assert kept.scored_vacuum is not None and kept.vacuum is not None
    # the evidence sum's level per frame's worth is the scored frame's dose again, not 1.15x it
    assert abs(kept.scored_vacuum[0] / kept.vacuum[0] - 1) < 0.075  # scaled by the count: 1.15


def test_the_reported_vacuum_level_is_the_frames_own_with_evidence_frames(den: Denoiser) -> None:
    """``meta.vacuum_counts`` (``BatchResult.vacuum``) and the dose check read the frame's own counts: a
    frame after a blank one is at 0.45, a 0.05 counts/px frame at ~0.05 (they read the evidence sum)."""
    from sbd_stream.service.evidence_history import EvidenceHistory

    doses = [0.45, 0.45, 0.0, 0.45, 0.45, 0.05, 0.45]
    frames = [_frame(i, d, 20 + i) for i, d in enumerate(doses)]
    history = EvidenceHistory(4)
    ev = [_stage(den, evidence_frames=4).process([f], history.take([f])) for f in frames]
    own = _stage(den).process(frames)
    got = np.array([float(r.vacuum[0]) for r in ev])  # type: ignore[index]
    assert own.vacuum is not None
    np.testing.assert_allclose(got, own.vacuum, rtol=1e-5)
    assert got[3] == pytest.approx(0.45, rel=0.1) and got[5] == pytest.approx(0.05, rel=0.2)
    assert got[2] == 0.0  # a blank frame's level is its mean
    measured = np.array([float(r.measured_vacuum[0]) for r in ev])  # type: ignore[index]
    np.testing.assert_allclose(measured[[0, 1, 3, 4, 5, 6]], got[[0, 1, 3, 4, 5, 6]])


def test_a_frame_without_evidence_is_scored_as_with_evidence_frames_0(den: Denoiser) -> None:
    """seq 0 of a series (and a frame whose evidence is all left out) is scored on its own counts by the
    paper's definition (constant model, 0.7 A), as ``--evidence-frames 0`` scores the same counts: it was
    the pattern model over 1.25 A (calibration defect 2)."""
    frames = [_frame(0, 0.45, 31), _frame(1, 0.45, 32)]
    ev = _stage(den, evidence_frames=4).process(frames)
    plain = _stage(den).process(frames)
    assert ev.evidence_frames is not None and ev.evidence_frames.tolist() == [0, 1]
    assert len(_columns(plain, 0)) > 0
    np.testing.assert_array_equal(_columns(ev, 0), _columns(plain, 0))
    assert ev.likelihood is not None and plain.likelihood is not None
    np.testing.assert_array_equal(ev.likelihood[0], plain.likelihood[0])
    assert not np.array_equal(ev.likelihood[1], plain.likelihood[1])  # frame 1 has evidence: scored on it
    # explicit values are kept in both: the same rule as the service with --evidence-frames 0
    given = dict(column_model="constant", column_radius_A=0.9)
    e2 = _stage(den, evidence_frames=4, **given).process(frames[:1])
    p2 = _stage(den, **given).process(frames[:1])
    np.testing.assert_array_equal(_columns(e2, 0), _columns(p2, 0))


def test_fixed_vacuum_scales_with_the_dose_of_the_evidence_kept(den: Denoiser) -> None:
    """``vacuum_mode = fixed``: the level scored against is the fixed one times the evidence's dose."""
    stage = _stage(den, evidence_frames=1, vacuum_mode="fixed", vacuum_counts=0.45)
    res = stage.process([_frame(1, 0.45, 41)], evidence=[[_frame(0, 0.45 * 1.2, 42)]])
    assert res.scored_vacuum is not None and res.vacuum is not None
    assert res.vacuum[0] == pytest.approx(0.45)  # meta.vacuum_counts: the fixed level, as configured
    assert res.scored_vacuum[0] == pytest.approx(0.45, rel=1e-5)  # per the scored frame's worth
