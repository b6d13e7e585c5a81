"""The dose normalisation's formulas pinned with an offset and a scale (mutation round h29,
compute/normalisation.py).

Every engine and test so far has offset 0 and scale 1, where ``(c / d - o) / s`` and ``c / d / s - o``
agree; a card with another offset or scale would have been denoised in the wrong units unseen.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from sbd_stream.compute.normalisation import Normalisation

NORM = Normalisation(dose=2.0, offset=0.5, scale=4.0)


def test_input_is_counts_over_the_dose_less_the_offset_over_the_scale() -> None:
    """``input = (counts / dose - offset) / scale``: 6 counts at dose 2 -> (3 - 0.5) / 4. Mutant: the
    offset taken after the scale."""
    counts = torch.tensor([[6.0, 0.0]])
    torch.testing.assert_close(NORM.to_input(counts), torch.tensor([[0.625, -0.125]]))


def test_counts_are_the_output_times_the_scale_plus_the_offset_times_the_dose() -> None:
    """``counts = (output * scale + offset) * dose``, the inverse of ``to_input``. Mutant: the offset
    added after the dose."""
    out = torch.tensor([[0.625, -0.125]])
    torch.testing.assert_close(NORM.to_counts(out), torch.tensor([[6.0, 0.0]]))
    x = torch.rand(3, 5) * 10
    torch.testing.assert_close(NORM.to_counts(NORM.to_input(x)), x)


def test_clean_units_add_the_offset_back() -> None:
    """Clean-image units (vacuum = 1): ``output * scale + offset``. Mutant: the offset subtracted."""
    torch.testing.assert_close(NORM.to_clean_units(torch.tensor([0.125])), torch.tensor([1.0]))


def test_a_frames_own_dose_replaces_the_configured_one_both_ways() -> None:
    """The service passes each frame's dose (detector dose, fixed vacuum mode); both directions use it.
    Mutants: either direction kept the configured dose."""
    counts = torch.tensor([9.0])
    x = NORM.to_input(counts, dose=3.0)
    torch.testing.assert_close(x, torch.tensor([(3.0 - 0.5) / 4.0]))
    torch.testing.assert_close(NORM.to_counts(x, dose=3.0), counts)


def test_a_dose_of_zero_is_refused() -> None:
    """A zero dose divides by zero on every frame. Mutant: ``ge`` for ``gt``."""
    with pytest.raises(ValidationError):
        Normalisation(dose=0.0)
    with pytest.raises(ValidationError):
        Normalisation(scale=0.0)
