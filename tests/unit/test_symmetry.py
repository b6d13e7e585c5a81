"""Averaging over orientations makes any per-frame function exactly equivariant to the square's turns."""

from __future__ import annotations

import pytest
import torch

from sbd_stream.engines.symmetry import ORIENTATIONS, orientations, symmetrised


def _lopsided(x: torch.Tensor) -> torch.Tensor:
    """A deliberately orientation-dependent 'network': a shift down and a ramp across the columns."""
    ramp = torch.linspace(0, 1, x.shape[-1])
    return torch.roll(x, 1, dims=-2) * (1 + ramp) + x.cumsum(-1) * 0.01


def _turn(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    y = torch.rot90(x, k, (-2, -1))
    return y.flip(-1) if mirror else y


def test_the_orientation_sets() -> None:
    assert [len(orientations(n)) for n in ORIENTATIONS] == [1, 2, 4, 8]
    assert len(set(orientations(8))) == 8
    with pytest.raises(ValueError):
        orientations(3)


def test_one_orientation_is_the_function_itself() -> None:
    x = torch.rand(2, 12, 10)
    torch.testing.assert_close(symmetrised(_lopsided, x, 1), _lopsided(x))


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_eight_orientations_make_it_equivariant(shape: tuple[int, int, int]) -> None:
    x = torch.rand(*shape, dtype=torch.float64)
    ref = symmetrised(_lopsided, x, 8)
    assert not torch.allclose(_lopsided(_turn(x, 1, False)), _turn(_lopsided(x), 1, False))  # not by itself
    for k in range(4):
        for mirror in (False, True):
            out = symmetrised(_lopsided, _turn(x, k, mirror), 8)
            torch.testing.assert_close(out, _turn(ref, k, mirror))


def test_four_turns_are_equivariant_to_turns() -> None:
    x = torch.rand(2, 14, 14, dtype=torch.float64)
    ref = symmetrised(_lopsided, x, 4)
    for k in range(4):
        torch.testing.assert_close(symmetrised(_lopsided, _turn(x, k, False), 4), _turn(ref, k, False))


def test_an_engine_is_averaged_only_over_the_orientations_it_was_trained_in(caplog) -> None:
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.engines.symmetry import trained_orientations
    from sbd_stream.service.batch import BatchStage

    assert trained_orientations({"config": {"augment": {"flips": True, "right_angles": True}}}) == 8
    assert trained_orientations({"config": {"augment": {"flips": True}}}) == 4  # the 4 flips, no quarter turn
    assert trained_orientations({"config": {"augment": {"flips": False}}}) == 1
    assert trained_orientations({}) == 8  # a card that does not say: the request stands
    # the shipped cards: the paper-world engines saw all 8 orientations, the detector engine flips only
    old = Denoiser.load(engine="torch", engine_dir="engines/sbd-unet4-detector")
    with caplog.at_level("WARNING"):
        assert BatchStage(old, orientations=8).orientations == 4  # the four flips (test_h30_klein_four.py)
    assert "trained in 4 orientation(s)" in caplog.text
    assert BatchStage(old, orientations=1).orientations == 1
    new = Denoiser.load(engine="torch", engine_dir="engines/sbd-unet3s2-paper")
    assert BatchStage(new, orientations=8).orientations == 8
