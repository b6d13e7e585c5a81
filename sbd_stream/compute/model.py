"""Denoising networks: the large-field-of-view UNet of the paper and the baselines' networks.

The UNet follows Appendix B.1: n scales, each a conv-BN-ReLU-conv-BN-ReLU block, max-pool down, bilinear
up, skip connections by concatenation, the same channel count everywhere. Its point is the field of view:
with 4 scales every output pixel sees ~230 px, with 6 scales ~940 px, at a modest parameter count.
DnCNN (B.2) and the small UNet of DURR (B.3) are the paper's small-field-of-view baselines.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F


class Architecture(StrEnum):
    unet = "unet"
    dncnn = "dncnn"
    small_unet = "small_unet"


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """UNet with ``scales`` max-pool/bilinear levels and ``channels`` feature maps at every level.

    Input height and width must be multiples of ``multiple`` (the tiler guarantees it). The output is
    the clean image in normalised units; the network predicts it directly (no residual), as in the paper.

    ``space_to_depth`` = s > 1 runs the whole UNet on s x s pixel blocks: the input is rearranged
    losslessly into s^2 channels at 1/s the resolution (ONNX SpaceToDepth) and the output back
    (DepthToSpace). Why: at the detector engine's 0.24 A working pixel the image is band-limited by the
    vibration envelope to ~1 A^-1, about the Nyquist frequency of 0.48 A blocks, so the full-resolution
    level (3/4 of a UNet's operations) resolves nothing the half-resolution one cannot; dropping it
    takes ~1/3 of the time for the same field of view in A (docs/training.md, "Fast live engine").
    """

    def __init__(
        self, in_ch: int = 1, out_ch: int = 1, scales: int = 4, channels: int = 32, space_to_depth: int = 1
    ) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError("scales must be >= 1")
        if space_to_depth < 1:
            raise ValueError("space_to_depth must be >= 1")
        self.scales = scales
        self.channels = channels
        self.space_to_depth = space_to_depth
        s2 = space_to_depth**2
        self.inc = ConvBlock(in_ch * s2, channels)
        self.down = nn.ModuleList(ConvBlock(channels, channels) for _ in range(scales))
        self.up = nn.ModuleList(ConvBlock(2 * channels, channels) for _ in range(scales))
        self.outc = nn.Conv2d(channels, out_ch * s2, 1)

    @property
    def multiple(self) -> int:
        return 2**self.scales * self.space_to_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.space_to_depth
        if s > 1:
            return F.pixel_shuffle(self._core(F.pixel_unshuffle(x, s)), s)
        return self._core(x)

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        h = skips[0]
        for block in self.down:
            h = block(F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = block(torch.cat([skips.pop(), h], dim=1))
        return self.outc(h)


class DnCNN(nn.Module):
    """DnCNN (B.2): 20 conv layers of 64 channels with BN and ReLU, predicting the residual noise."""

    multiple = 1

    def __init__(self, in_ch: int = 1, depth: int = 20, channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, in_ch, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


class SmallUNet(nn.Module):
    """The restoration UNet of DURR (B.3); even sizes only, FoV ~45 px."""

    multiple = 2

    def __init__(self, in_ch: int = 1) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            pad = dilation * (k - 1) // 2
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation), nn.ReLU(inplace=True)
            )

        self.conv1 = conv(in_ch, 32, 5)
        self.conv2 = conv(32, 32, 3)
        self.conv3 = conv(32, 64, 3, stride=2)
        self.conv4 = conv(64, 64, 3)
        self.conv5 = conv(64, 64, 3, dilation=2)
        self.conv6 = conv(64, 64, 3, dilation=4)
        self.conv7 = nn.Sequential(nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.conv8 = conv(96, 32, 3)
        self.conv9 = nn.Conv2d(32, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.conv2(self.conv1(x))
        h = self.conv6(self.conv5(self.conv4(self.conv3(c2))))
        h = self.conv8(torch.cat([self.conv7(h), c2], dim=1))
        return self.conv9(h)


def build_model(architecture: Architecture | str, **kwargs: int) -> nn.Module:
    arch = Architecture(architecture)
    if arch is Architecture.unet:
        return UNet(
            scales=kwargs.get("scales", 4),
            channels=kwargs.get("channels", 32),
            space_to_depth=kwargs.get("space_to_depth", 1),
        )
    if arch is Architecture.dncnn:
        return DnCNN(depth=kwargs.get("depth", 20), channels=kwargs.get("channels", 64))
    return SmallUNet()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- field of view -----------------------------------------------------------------------------------
# Exact support of one output pixel, propagated as an interval of input indices through every layer.
# Max-pool and bilinear upsampling make the extent depend on the pixel's position modulo 2**scales, so
# the field of view is the worst case over those positions: that is what a tile margin must cover.


def _conv(iv: tuple[int, int], k: int = 3, dilation: int = 1, stride: int = 1) -> tuple[int, int]:
    r = dilation * (k - 1) // 2
    return iv[0] * stride - r, iv[1] * stride + r


def _pool_in(iv: tuple[int, int]) -> tuple[int, int]:
    """Coarse interval -> the fine pixels feeding it through a 2x2 stride-2 max-pool."""
    return 2 * iv[0], 2 * iv[1] + 1


def _bilinear_in(iv: tuple[int, int]) -> tuple[int, int]:
    """Fine interval -> coarse pixels touched by half-pixel bilinear x2 upsampling (both taps non-zero)."""
    a, b = iv
    lo = a // 2 - (1 if a % 2 == 0 else 0)
    hi = b // 2 + (1 if b % 2 == 1 else 0)
    return lo, hi


def _unet_support(p: int, scales: int) -> tuple[int, int]:
    """Input interval seen by output pixel ``p`` of a UNet (union over the skip and the deep paths)."""

    def encoder(iv: tuple[int, int], level: int) -> tuple[int, int]:
        # iv at the output of the encoder block at `level`; map it back to the network input.
        iv = _conv(_conv(iv))
        for _ in range(level):
            iv = _conv(_conv(_pool_in(iv)))
        return iv

    def decoder(iv: tuple[int, int], level: int) -> tuple[int, int]:
        # iv at the output of the up-block producing resolution `level` (0 = full resolution).
        before = _conv(_conv(iv))  # back through the block's two convs onto the concatenation
        skip = encoder(before, level)
        coarse_iv = _bilinear_in(before)
        coarse = encoder(coarse_iv, scales) if level + 1 == scales else decoder(coarse_iv, level + 1)
        return min(skip[0], coarse[0]), max(skip[1], coarse[1])

    return decoder((p, p), 0)


def field_of_view(model: nn.Module) -> int:
    """Exact field of view (pixels, per axis) of ``model``: the widest input support of one output pixel."""
    lo, hi = support_extent(model)
    return lo + hi + 1


def support_extent(model: nn.Module) -> tuple[int, int]:
    """Worst-case (left, right) reach of one output pixel's support: the margin a tile needs per side."""
    if isinstance(model, UNet):
        # on s x s blocks: output pixel p lies in block p // s, whose support in blocks is [lo, hi]
        s = model.space_to_depth
        left = right = 0
        for p in range(2**model.scales * s):
            lo, hi = _unet_support(p // s, model.scales)
            left, right = max(left, p - s * lo), max(right, s * hi + s - 1 - p)
        return left, right
    if isinstance(model, DnCNN):
        return model.depth, model.depth
    if isinstance(model, SmallUNet):
        left = right = 0
        for p in range(2):
            iv = _conv((p, p), k=5)  # conv9
            skip = _conv(iv)  # conv8
            coarse = _conv(_conv(_conv(_transpose_in(skip), dilation=4), dilation=2))  # conv7..conv4
            coarse = _conv(coarse, stride=2)  # conv3
            lo, hi = min(skip[0], coarse[0]), max(skip[1], coarse[1])
            lo, hi = _conv(_conv((lo, hi)), k=5)  # conv2, conv1
            left, right = max(left, p - lo), max(right, hi - p)
        return left, right
    raise TypeError(f"no field-of-view rule for {type(model).__name__}")


def _transpose_in(iv: tuple[int, int]) -> tuple[int, int]:
    """Fine interval -> coarse inputs of ConvTranspose2d(k=4, stride=2, padding=1)."""
    # output o receives input i when o = 2i - 1 + t, t in 0..3  =>  i in [(o - 2)/2, (o + 1)/2]
    a, b = iv
    return -((2 - a) // 2), (b + 1) // 2
