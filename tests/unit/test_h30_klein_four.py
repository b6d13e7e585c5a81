"""A flips-only engine is averaged over the four flips it was trained in, not over 2 (session 30).

``augment.flips`` mirrors each axis independently (training/train/augment.py, ``affine_params``), so an
engine trained with flips only (``sbd-unet4-detector``, ``sbd-unet4-default``, the CPU presets) saw the
frame as is, mirrored left-right, mirrored up-down and turned by half: the Klein four-group. The
offline ensemble used only the first two; over all four the detector engine scored +0.32 dB whole frame
on the bundled paper-world frames (measured in /tmp/h30/klein, docs/training.md "Offline"). A request
for 4 or 8 now gets those four flips; right-angle engines keep ``orientations(n)``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import make_tiny_engine

from sbd_stream.config import DetectorSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.engines.symmetry import orientations, symmetrised, trained_orientations
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage

FLIPS_ONLY = {"augment": {"flips": True, "right_angles": False}}  # as the CPU presets record it
RIGHT_ANGLES = {"config": {"augment": {"flips": True, "right_angles": True}}}
NO_FLIPS = {"augment": {"flips": False}}
KLEIN_FOUR = [(0, False), (0, True), (2, False), (2, True)]
Load = Callable[[dict], Denoiser]
DETECTOR = DetectorSettings(pixel_size_A=0.24, counts_per_px=7.2)  # the engine's own pixel: bin 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Load:
    """One tiny engine (0.24 A, 7.2 counts/px) written once, loaded under each card's ``training``."""
    base = make_tiny_engine(
        tmp_path_factory.mktemp("h30") / "e", pixel_size_A=0.24, dose_e_per_A2=7.2 / 0.24**2
    )
    loaded: dict[str, Denoiser] = {}

    def load(training: dict) -> Denoiser:
        key = json.dumps(training, sort_keys=True)
        if key not in loaded:
            path = base.parent / f"e{len(loaded)}"
            shutil.copytree(base, path)
            card = json.loads((path / "card.json").read_text())
            card["training"] = training
            (path / "card.json").write_text(json.dumps(card))
            loaded[key] = Denoiser.load(engine="torch", engine_dir=path, device="cpu")
        return loaded[key]

    return load


def _turn(a: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    b = np.rot90(a, k)
    return np.ascontiguousarray(b[:, ::-1] if mirror else b)


def _unturn(a: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(a[:, ::-1] if mirror else a, -k))


def _denoised(stage: BatchStage, counts: np.ndarray) -> np.ndarray:
    h = FrameHeader("t", 0, 0.0, counts.shape, "float32")
    return stage.process([Frame(h, np.ascontiguousarray(counts, np.float32))]).denoised[0].astype(np.float64)


def _counts(shape: tuple[int, int] = (48, 56)) -> np.ndarray:
    """A lopsided scene (a bright blob off centre, a ramp) so no flip of it is the frame itself."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rate = 7.2 * (1 + 0.5 * np.exp(-((yy - 11) ** 2 + (xx - 37) ** 2) / 30) + 0.2 * xx / shape[1])
    return np.random.default_rng(3).poisson(rate).astype(np.float32)


@pytest.mark.parametrize(
    ("training", "requested", "used"),
    [
        (FLIPS_ONLY, 8, 4),  # was 2: as is and mirrored left-right only
        (FLIPS_ONLY, 4, 4),  # was 2
        (FLIPS_ONLY, 2, 2),
        (FLIPS_ONLY, 1, 1),
        (NO_FLIPS, 8, 1),
        (RIGHT_ANGLES, 8, 8),
        (RIGHT_ANGLES, 4, 4),
        (RIGHT_ANGLES, 2, 2),
        ({}, 8, 8),  # a card that does not say: the request stands
    ],
)
def test_the_cap_counts_what_each_training_saw(
    engine: Load, training: dict, requested: int, used: int
) -> None:
    assert BatchStage(engine(training), DETECTOR, orientations=requested).orientations == used


def test_a_flips_only_card_may_be_averaged_over_4() -> None:
    """``trained_orientations``: the four flips (it said 2), right angles 8, no flips 1."""
    assert trained_orientations(FLIPS_ONLY) == 4
    assert trained_orientations({"config": FLIPS_ONLY}) == 4
    assert trained_orientations(RIGHT_ANGLES) == 8
    assert trained_orientations(NO_FLIPS) == 1


@pytest.mark.parametrize(
    ("training", "requested", "expected"),
    [
        (FLIPS_ONLY, 8, KLEIN_FOUR),
        (FLIPS_ONLY, 4, KLEIN_FOUR),
        (FLIPS_ONLY, 2, orientations(2)),
        (RIGHT_ANGLES, 4, orientations(4)),  # the quarter turns, as before
        (RIGHT_ANGLES, 8, orientations(8)),
        (RIGHT_ANGLES, 2, orientations(2)),
    ],
)
def test_the_stage_averages_exactly_the_expected_set(
    engine: Load, training: dict, requested: int, expected: list[tuple[int, bool]]
) -> None:
    """The stage's output is the mean of the live (1-orientation) stage over the expected turned copies,
    each turned back: the flips-only cases failed before (a mean over 2), the right-angle ones pin that
    their meaning of ``--orientations N`` is unchanged (a non-square frame, so quarter turns count)."""
    den = engine(training)
    live = BatchStage(den, DETECTOR, orientations=1)
    counts = _counts()
    by_hand = np.mean([_unturn(_denoised(live, _turn(counts, k, m)), k, m) for k, m in expected], axis=0)
    got = _denoised(BatchStage(den, DETECTOR, orientations=requested), counts)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-5 * np.abs(by_hand).max())


@pytest.mark.parametrize("requested", [4, 8])
def test_a_flips_only_engine_is_equivariant_under_the_four_flips(engine: Load, requested: int) -> None:
    """A flipped frame gives the flipped result, for each of the four flips (same noise, flipped with the
    frame). Before, mirrored up-down or turned by half it did not: only left-right was averaged."""
    stage = BatchStage(engine(FLIPS_ONLY), DETECTOR, orientations=requested)
    counts = _counts()
    ref = _denoised(stage, counts)
    assert not np.allclose(_denoised(BatchStage(stage.denoiser, DETECTOR), counts[::-1]), ref[::-1])  # alone
    for k, mirror in KLEIN_FOUR:
        out = _denoised(stage, _turn(counts, k, mirror))
        np.testing.assert_allclose(out, _turn(ref, k, mirror), rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_the_symmetrised_mean_over_the_flips_is_equivariant_under_them() -> None:
    """The pure function, given the set: any per-frame function becomes exactly flip-equivariant."""
    from sbd_stream.engines.symmetry import FLIPS

    def lopsided(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1], dtype=x.dtype)
        return torch.roll(x, 1, dims=-2) * (1 + ramp) + x.cumsum(-1) * 0.01

    assert FLIPS == KLEIN_FOUR
    x = torch.rand(2, 10, 14, dtype=torch.float64)
    ref = symmetrised(lopsided, x, FLIPS)
    for k, mirror in FLIPS:
        turned = torch.rot90(x, k, (-2, -1))
        turned = turned.flip(-1) if mirror else turned
        want = torch.rot90(ref, k, (-2, -1))
        torch.testing.assert_close(symmetrised(lopsided, turned, FLIPS), want.flip(-1) if mirror else want)


def test_the_log_names_the_flips_used(engine: Load, caplog: pytest.LogCaptureFixture) -> None:
    """Where the capped count was logged, the set used is named (a count of 4 alone reads as quarter
    turns)."""
    caplog.set_level(logging.WARNING, logger="sbd_stream.service.batch")
    BatchStage(engine(FLIPS_ONLY), DETECTOR, orientations=8)
    msgs = [r.getMessage() for r in caplog.records if "averaging over" in r.getMessage()]
    assert len(msgs) == 1 and "trained in 4 orientation(s)" in msgs[0], msgs
    assert "the 4 flips (as is, mirrored left-right, mirrored up-down, half turn) instead of 8" in msgs[0]
