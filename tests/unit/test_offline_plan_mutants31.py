"""``overridden``: the warning when an option replaces what the input states (a mutation round, h31).

Only ``--pixel-size 0.06`` against a stated 0.12 A (2x) was pinned (tests/e2e/test_denoise_inputs.py): a
warning that said nothing for a replaced dose, nothing for a 5 % different pixel (a 1.05x binning
error), or only the first of two replacements passed every test.
"""

from __future__ import annotations

import pytest

from sbd_stream.service.offline_plan import overridden


@pytest.mark.parametrize(
    "key, stated, given, line",
    [
        ("pixel_size_A", 0.12, 0.126, "--pixel-size 0.126 replaces the 0.12 A the input states"),
        ("pixel_size_A", 0.12, 0.114, "--pixel-size 0.114 replaces the 0.12 A the input states"),
        ("dose_e_per_A2", 125.0, 100.0, "--dose 100 replaces the 125 e/A^2 the input states"),
        ("counts_per_px", 0.45, 0.9, "--counts-per-px 0.9 replaces the 0.45 counts/px the input states"),
    ],
)
def test_an_option_that_differs_from_the_stated_value_says_so(
    key: str, stated: float, given: float, line: str
) -> None:
    assert overridden({key: stated}, {key: given}) == line


def test_every_replaced_value_is_named_in_one_line() -> None:
    got = overridden(
        {"pixel_size_A": 0.12, "dose_e_per_A2": 125.0}, {"pixel_size_A": 0.06, "dose_e_per_A2": 80.0}
    )
    assert got == (
        "--pixel-size 0.06 replaces the 0.12 A the input states; "
        "--dose 80 replaces the 125 e/A^2 the input states"
    )


def test_the_same_value_or_none_given_or_none_stated_says_nothing() -> None:
    stated = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0}
    assert overridden(stated, {"pixel_size_A": 0.06 * (1 + 5e-4), "dose_e_per_A2": None}) is None
    assert overridden(stated, None) is None
    assert overridden({}, {"pixel_size_A": 0.05, "counts_per_px": 0.3}) is None
