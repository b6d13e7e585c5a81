"""Evidence frames binned once (audit 25 perf D2): ``BatchStage.binned`` never changes a result.

With ``--evidence-frames N`` each frame was uploaded and binned again for each of the N frames it scores;
the stage now keeps the working-pixel counts of the read-only frames it binned (``BinnedCache``). Here a
stage with the cache and one whose cache is emptied before every batch (every frame binned afresh, as
before) score the same stream, with the evidence the service's ``EvidenceHistory`` decides at receipt:
two acquisitions, a frame never received (a gap), frames the live lane skipped (evidence never binned by
the stage, denoised later by the complete lane), a blank frame, batches of 1-3 frames. Every output is
compared bit for bit.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.evidence_history import EvidenceHistory

SHAPE = (256, 252)  # 64 x 63 working pixels at bin 4 (a side that is not a multiple of 4)
ENGINE = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet3s2-paper"
N = 4
FIELDS = ("denoised", "likelihood", "level", "blank", "vacuum", "measured_vacuum", "scored_vacuum",
          "evidence_frames", "evidence_left_out", "vacuum_not_flat")  # fmt: skip


@pytest.fixture(scope="module")
def den() -> Denoiser:
    """The shipped live CPU engine: the tiny test engine finds no columns to score."""
    return Denoiser.load("auto", ENGINE, device="cpu")


class CountingStage(BatchStage):
    """The real stage, counting the frames it uploads (each is binned once per upload)."""

    uploaded = 0

    def upload(self, frames: Sequence[np.ndarray]) -> object:  # type: ignore[override]
        self.uploaded += len(frames)
        return super().upload(frames)


def _stage(den: Denoiser) -> CountingStage:
    return CountingStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, evidence_frames=N))


def _scene() -> np.ndarray:
    """Vacuum (1) and a patch of bright Gaussian "columns" (contrast 2, 1 A apart): columns to score."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.ones(SHAPE)
    for r in range(SHAPE[0] // 2 + 8, SHAPE[0] - 8, 16):
        for c in range(8, SHAPE[1] - 8, 16):
            img += 2.0 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 3.0**2))
    return img


def _frame(acq: str, seq: int, lam: float, seed: int, writeable: bool = False) -> Frame:
    data = np.random.default_rng(seed).poisson(lam * _scene()).astype("uint16")
    data.flags.writeable = writeable  # the service's frames are read-only (wire views, edge copies)
    return Frame(FrameHeader(acq, seq, time.time(), SHAPE, "uint16"), data)


def _same(a: BatchResult, b: BatchResult) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x is not None and y is not None, name
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.columns is not None and b.columns is not None and len(a.columns) == len(b.columns)
    for x, y in zip(a.columns, b.columns, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_outputs_with_the_cache_are_those_of_binning_every_frame_afresh(den: Denoiser) -> None:
    rng = np.random.default_rng(0)
    received: list[Frame] = []
    for i in range(12):
        if i != 7:  # a/7 is never received: a gap in a/8 .. a/11's evidence
            received.append(_frame("a", i, 0.0 if i == 5 else 0.45, 100 + i))  # a/5: no beam
    received += [_frame("b", i, 0.45, 200 + i) for i in range(7)]
    skipped = {("a", 3), ("a", 9), ("b", 2)}  # received (others' evidence) but left to the complete lane
    history = EvidenceHistory(N)
    for f in received:
        history.keep(f)
    live = [f for f in received if (f.header.acq, f.header.seq) not in skipped]
    late = [f for f in received if (f.header.acq, f.header.seq) in skipped]
    batches, i = [], 0
    while i < len(live):
        k = int(rng.integers(1, 4))
        batches.append(live[i : i + k])
        i += k
    batches.append(late[:2])  # the complete lane: frames that were evidence, now denoised
    batches.append(late[2:])
    cached, fresh = _stage(den), _stage(den)
    scored = 0
    for batch in batches:
        ev = history.each(batch)
        fresh.binned.clear()  # every frame binned again, as before the cache
        a, b = cached.process(batch, evidence=ev), fresh.process(batch, evidence=ev)
        _same(a, b)
        assert a.evidence_frames is not None and a.columns is not None
        scored += sum(int(n > 0 and len(c) > 0) for n, c in zip(a.evidence_frames, a.columns, strict=True))
        assert len(cached.binned) <= 2 * (N + len(batch)) + 8
    assert scored >= 10  # most frames scored on evidence, with columns found
    assert cached.uploaded < fresh.uploaded / 2  # each kept frame uploaded and binned once


def test_a_writable_frame_changed_in_place_is_binned_again(den: Denoiser) -> None:
    """A Python caller's own (writable) array is neither kept nor looked up: changed between calls, the
    evidence it gives is its new counts, as a fresh stage computes them."""
    stage, fresh = _stage(den), _stage(den)
    f0, f1 = _frame("c", 0, 0.45, 1, writeable=True), _frame("c", 1, 0.45, 2)
    stage.process([f0])
    assert len(stage.binned) == 0
    f0.data[:] = np.random.default_rng(3).poisson(0.9 * _scene()).astype("uint16")  # a beam step
    a = stage.process([f1], evidence=[[f0]])
    _same(a, fresh.process([f1], evidence=[[f0]]))
    assert a.evidence_left_out is not None and a.evidence_left_out.tolist() == [1]  # 2x dose: left out
    ro = _frame("c", 2, 0.45, 4)
    stage.process([ro])
    assert len(stage.binned) == 2  # c/1 and c/2 (read-only), never c/0
    ro.data.flags.writeable = True  # made writable after it was kept: no longer taken from the cache
    before = stage.uploaded
    stage.process([f1], evidence=[[ro]])
    assert stage.uploaded == before + 1  # c/2 binned again (c/1, read-only, from the cache)


def test_a_frame_that_is_gone_leaves_the_cache(den: Denoiser) -> None:
    """Entries hold weak references: a freed frame's entry can never answer for a new array at its id."""
    stage = _stage(den)
    frames = [_frame("d", i, 0.45, 10 + i) for i in range(3)]
    for f in frames:
        stage.process([f])
    assert len(stage.binned) == 3
    del frames[:2]
    gc.collect()
    stage.process([_frame("d", 3, 0.45, 13)], evidence=[[frames[0]]])
    assert len(stage.binned) == 2  # d/2 and d/3 only
