"""Self-ensemble over the square's symmetries: denoise a frame in several orientations, turn each result
back, and average.

Why: the network is trained in all 8 right-angle orientations (or, with flips only, in the 4 ``FLIPS``),
but a convolutional network is not exactly invariant to them; the same frame turned by 90 degrees scores
up to ~1 dB differently. Averaging over all the orientations it was trained in makes the output exactly
equivariant to them (a turned frame gives the turned result, up to float rounding) and, as an ensemble,
a little better. It costs one engine call per orientation, so it is for offline work (``sbd-stream
denoise``, ``replay --offline``, evaluation), not the live lane. Pure: the network is a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ORIENTATIONS = (1, 2, 4, 8)
"""1: as is; 2: and mirrored; 4: the four quarter turns; 8: quarter turns, each also mirrored."""
Orientation = tuple[int, bool]
"""(quarter turns counter-clockwise, then mirrored left-right): ``turn``'s arguments."""
FLIPS: list[Orientation] = [(0, False), (0, True), (2, False), (2, True)]
"""The four flips: as is, mirrored left-right, a half turn, a half turn mirrored (= mirrored up-down).
What ``augment.flips`` draws (each axis mirrored with probability 1/2, training/train/augment.py), so
what a flips-only engine gets for 4 or 8 orientations."""


def orientations(n: int) -> list[tuple[int, bool]]:
    """The (quarter turns, mirrored) pairs of ``n`` orientations."""
    if n not in ORIENTATIONS:
        raise ValueError(f"orientations must be one of {ORIENTATIONS}, got {n}")
    if n == 1:
        return [(0, False)]
    if n == 2:
        return [(0, False), (0, True)]
    turns = [(k, False) for k in range(4)]
    return turns if n == 4 else turns + [(k, True) for k in range(4)]


def trained_orientations(training: dict) -> int:
    """How many of the orientations an engine may be averaged over: those it saw in training.

    An engine trained in all 8 right-angle orientations (``augment.right_angles``) gives 8; one trained
    with flips only gives 4, the four ``FLIPS`` (``augment.flips`` mirrors each axis independently, so it
    saw the frame as is, mirrored either way and turned by half, but never a quarter turn); trained
    without flips, 1. A card that records no augmentation (an engine made elsewhere) gives 8: nothing is
    known, so the request stands. Why the flips and no quarter turn: on the 6 bundled paper-world frames
    at 0.060 A (8 noise draws each, the same for every set; docs/training.md, "Offline")
    ``sbd-unet4-detector`` scored 34.97 dB whole frame as is, 35.22 over 2 (as is, mirrored), 35.54 over
    the 4 flips (support +0.28, particle +0.27 dB over 2) and 29.27 over all 8; ``sbd-unet4-default``,
    at its own pixel, +0.21 dB whole over 2 with the 4 flips, -2.3 dB with all 8.
    """
    augment = (training.get("config") or {}).get("augment") or training.get("augment")
    if not augment or augment.get("right_angles"):
        return 8
    return 4 if augment.get("flips") else 1


def ensemble(n: int, training: dict) -> list[Orientation]:
    """The orientations that a request for ``n`` gets on an engine with this card's ``training``.

    Right-angle engines (and cards that do not say): ``orientations(n)``, whatever ``n``. A flips-only
    engine: as is for 1, as is and mirrored for 2, the four ``FLIPS`` for 4 or 8 (never a quarter turn:
    it was not trained in one). Without flips: as is."""
    wanted = orientations(n)
    trained = trained_orientations(training)
    if trained == 8 or n == 1:
        return wanted
    if trained == 1:
        return orientations(1)
    return wanted if n == 2 else list(FLIPS)


def describe(oset: Sequence[Orientation]) -> str:
    """An orientation set in words, for the log line that says what an engine is averaged over: a count
    of 4 alone would not say whether it is the quarter turns or the flips."""
    names = {
        tuple(orientations(1)): "1 orientation (as is)",
        tuple(orientations(2)): "2 orientations (as is, mirrored left-right)",
        tuple(FLIPS): "the 4 flips (as is, mirrored left-right, mirrored up-down, half turn)",
        tuple(orientations(4)): "the 4 quarter turns",
        tuple(orientations(8)): "all 8 orientations",
    }
    return names.get(tuple(oset), f"{len(oset)} orientations {list(oset)}")


def turn(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """``x`` (..., H, W) turned ``k`` quarter turns, then mirrored left-right if ``mirror``."""
    y = torch.rot90(x, k, (-2, -1)) if k else x
    return (y.flip(-1) if mirror else y).contiguous()


def unturn(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """The inverse of ``turn``."""
    y = y.flip(-1) if mirror else y
    return torch.rot90(y, -k, (-2, -1)) if k else y


def symmetrised(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int | Sequence[Orientation]
) -> torch.Tensor:
    """The mean of ``fn`` applied to ``x`` (..., H, W) turned, turned back: over ``orientations(n)`` for
    a count, or over the given (quarter turns, mirrored) pairs (``ensemble``'s, e.g. ``FLIPS``)."""
    oset = orientations(n) if isinstance(n, int) else list(n)
    if oset == [(0, False)]:
        return fn(x)
    acc: torch.Tensor | None = None
    for k, mirror in oset:
        y = unturn(fn(turn(x, k, mirror)), k, mirror)
        acc = y if acc is None else acc + y
    assert acc is not None
    return acc / len(oset)
