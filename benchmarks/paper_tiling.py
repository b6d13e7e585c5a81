"""The tiling of the paper's public code, kept as the baseline the product is measured against.

400 x 400 patches at stride 350 (the last patch clamped to the frame's end), every patch run through
eager PyTorch in one batch, overlapping outputs averaged with uniform weight and no margin crop.
"""

from __future__ import annotations

import torch


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch, stride))
    starts.append(length - patch)
    return sorted(set(starts))


@torch.inference_mode()
def paper_patch_average(
    x: torch.Tensor, model: torch.nn.Module, patch: int = 400, stride: int = 350
) -> torch.Tensor:
    """(B, 1, H, W) normalised input -> (B, 1, H, W) output, as the paper's code tiles it."""
    b, _, h, w = x.shape
    ys, xs = patch_starts(h, patch, stride), patch_starts(w, patch, stride)
    ph, pw = min(patch, h), min(patch, w)
    tiles = torch.cat([x[:, :, y : y + ph, c : c + pw] for y in ys for c in xs])
    out_tiles = model(tiles)
    out = torch.zeros_like(x)
    count = torch.zeros_like(x)
    k = 0
    for y in ys:
        for c in xs:
            out[:, :, y : y + ph, c : c + pw] += out_tiles[k * b : (k + 1) * b]
            count[:, :, y : y + ph, c : c + pw] += 1
            k += 1
    return out / count


def paper_seam_lines(length: int, patch: int = 400, stride: int = 350) -> list[int]:
    """Where a patch edge falls inside the frame: the lines a seam can appear on."""
    starts = patch_starts(length, patch, stride)
    lines = {s for s in starts if s > 0} | {s + patch for s in starts if s + patch < length}
    return sorted(lines)
