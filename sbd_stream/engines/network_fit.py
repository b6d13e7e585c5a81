"""Whether weights fit the network a card describes, said in one line.

Why: a card lying about its scales, channels or architecture ended in ``load_state_dict``'s traceback
listing every key (torch), or was not noticed at all (ONNX). These helpers compare what is comparable
and name the first differences, for ``card`` and ``onnx_checks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def dncnn_parameters_fit(parameters: int, channels: int) -> bool:
    """Whether a DnCNN of ``channels`` has ``parameters`` at some depth >= 2 (cards do not state it).

    DnCNN: a first conv with bias (9C + C), depth - 2 conv + batch-norm layers (9C^2 + 2C each) and a
    last conv with bias (9C + 1)."""
    c = channels
    rest = parameters - (19 * c + 1)
    return rest >= 0 and rest % (9 * c * c + 2 * c) == 0


def dncnn_conv_shapes(channels: int, have: Mapping[tuple[int, ...], int]) -> dict[tuple[int, ...], int]:
    """The convolution weight shapes of a DnCNN of ``channels``, at the depth the weights ``have``."""
    c = channels
    want: dict[tuple[int, ...], int] = {(c, 1, 3, 3): 1, (1, c, 3, 3): 1}
    if have.get((c, c, 3, 3)):
        want[(c, c, 3, 3)] = have[(c, c, 3, 3)]
    return want


def state_dict_mismatch(model: torch.nn.Module, state: Any) -> str | None:
    """How ``state`` differs from ``model``'s state dict (missing, unexpected, other shapes), or None."""
    if not isinstance(state, Mapping):
        return f"it holds a {type(state).__name__}, not a state dict"
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [
        k
        for k in want
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != want[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {str(extra[0])[:60]!r})")
    if shapes:
        k = shapes[0]
        got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
        parts.append(
            f"{len(shapes)} of another shape (e.g. {k!r}: file {got}, network {tuple(want[k].shape)})"
        )
    return "; ".join(parts) or None
