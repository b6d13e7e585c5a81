"""The augmentation's orientation set and per-sample doses (audit 27, mutation round 4: AU1, AU2, AU4).

Why: a network trained on 4 of the 8 right-angle orientations never sees its support on two of the sides
(the orientation spread the quality gate measures), one trained on flips of one axis never sees the
support upside down, and one dose per batch instead of per sample teaches each batch one noise level.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch

from sbd_stream.compute.normalisation import Normalisation
from training.train.augment import AugmentSpec, affine_params, draw_batch


def _orientation_counts(spec: AugmentSpec, n: int) -> Counter[tuple[int, ...]]:
    mats, _ = affine_params(np.random.default_rng(0), n, spec, 64, 64)
    whole = np.round(mats)
    assert np.array_equal(mats, whole)  # no rotation, no rescale: exact signed permutations
    return Counter(tuple(int(v) for v in m.ravel()) for m in whole)


def _signed_permutations() -> set[tuple[int, ...]]:
    out = set()
    for perm in itertools.permutations(range(2)):
        for signs in itertools.product((-1, 1), repeat=2):
            m = np.zeros((2, 2), dtype=int)
            for row, col in enumerate(perm):
                m[row, col] = signs[row]
            out.add(tuple(int(v) for v in m.ravel()))
    return out


def test_right_angles_with_flips_draw_all_8_orientations_evenly() -> None:
    n = 4000
    seen = _orientation_counts(
        AugmentSpec(patch=32, max_rotation_deg=0, rescale_prob=0, right_angles=True), n
    )
    assert set(seen) == _signed_permutations()  # the 4 turns, each also mirrored: the square's 8 symmetries
    shares = np.array(list(seen.values())) / n
    assert np.all(np.abs(shares - 1 / 8) < 0.03), seen  # each ~1/8 (1 sd: 0.005)


def test_flips_alone_give_the_4_axis_flips_evenly() -> None:
    n = 2000
    seen = _orientation_counts(AugmentSpec(patch=32, max_rotation_deg=0, rescale_prob=0), n)
    assert set(seen) == {(1, 0, 0, 1), (-1, 0, 0, 1), (1, 0, 0, -1), (-1, 0, 0, -1)}  # both axes, and both
    shares = np.array(list(seen.values())) / n
    assert np.all(np.abs(shares - 1 / 4) < 0.04), seen


def test_dose_range_draws_one_dose_per_sample() -> None:
    """The per-sample dose is read from the input's noise: on a flat clean image of 1, the input is
    counts / dose, whose variance is 1 / dose (doses of a few counts: the estimate is good to ~5 %)."""
    lo, hi = 2.0, 9.0
    spec = AugmentSpec(patch=32, max_rotation_deg=0, rescale_prob=0, dose_range=(lo, hi))
    x, y = draw_batch(torch.ones(64, 64, 64), np.random.default_rng(3), spec, 5.0, Normalisation(dose=5.0))
    assert torch.allclose(y, torch.ones_like(y), atol=1e-5)
    dose = (1 / x.var((1, 2, 3))).numpy()
    assert np.all((dose > 0.75 * lo) & (dose < 1.25 * hi)), dose
    # one dose per batch would give a spread of a few % (the estimate's own); per sample: ~lo..hi
    assert dose.max() / dose.min() > 2.5, dose
    assert np.mean(dose < (lo + hi) / 2) > 0.25 and np.mean(dose > (lo + hi) / 2) > 0.25, dose
