"""Self-ensemble over the square's symmetries: denoise a frame in several orientations, turn each result
back, and average.

Why: the network is trained in all 8 right-angle orientations, but a convolutional network is not
exactly invariant to them; the same frame turned by 90 degrees scores up to ~1 dB differently. Averaging
over all 8 orientations makes the output exactly equivariant (a turned frame gives the turned result, up
to float rounding) and, as an ensemble, a little better. It costs one engine call per orientation, so it
is for offline work (``sbd-stream denoise``, ``replay --offline``, evaluation), not the live lane. Pure:
the network is a callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ORIENTATIONS = (1, 2, 4, 8)
"""1: as is; 2: and mirrored; 4: the four quarter turns; 8: quarter turns, each also mirrored."""


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
    with flips only saw each frame mirrored but never turned a quarter, and averaging it over quarter
    turns costs (``sbd-unet4-detector`` on the paper's images: 30.5 dB over 8 orientations against
    34.8 dB as is), so it gives 2 (as is and mirrored); trained without flips, 1. A card that records no
    augmentation (an engine made elsewhere) gives 8: nothing is known, so the request stands.
    """
    augment = (training.get("config") or {}).get("augment") or training.get("augment")
    if not augment or augment.get("right_angles"):
        return 8
    return 2 if augment.get("flips") else 1


def turn(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """``x`` (..., H, W) turned ``k`` quarter turns, then mirrored left-right if ``mirror``."""
    y = torch.rot90(x, k, (-2, -1)) if k else x
    return (y.flip(-1) if mirror else y).contiguous()


def unturn(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """The inverse of ``turn``."""
    y = y.flip(-1) if mirror else y
    return torch.rot90(y, -k, (-2, -1)) if k else y


def symmetrised(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """The mean over ``n`` orientations of ``fn`` applied to ``x`` (..., H, W) turned, turned back."""
    if n == 1:
        return fn(x)
    acc: torch.Tensor | None = None
    for k, mirror in orientations(n):
        y = unturn(fn(turn(x, k, mirror)), k, mirror)
        acc = y if acc is None else acc + y
    assert acc is not None
    return acc / n
