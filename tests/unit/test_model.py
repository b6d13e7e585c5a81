"""The networks: shapes, parameter counts, and the exact field of view measured by input gradients."""

from __future__ import annotations

import pytest
import torch

from sbd_stream.compute.model import DnCNN, SmallUNet, UNet, count_parameters, field_of_view, support_extent


def measured_extent(model: torch.nn.Module, size: int, positions: range) -> tuple[int, int]:
    """Widest (left, right) reach of the input-gradient support of one output pixel, over positions.

    Max-pool passes gradient to one pixel of each window only, so a batch of random inputs and many
    channels are used and their supports united.
    """
    model.eval()
    left = right = 0
    c = size // 2
    for p in positions:
        x = torch.randn(4, 1, size, size, requires_grad=True)
        model(x)[:, 0, c, c + p].sum().backward()
        support = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).flatten()
        left = max(left, c + p - int(support.min()))
        right = max(right, int(support.max()) - c - p)
    return left, right


@pytest.mark.parametrize("scales", [1, 2, 3, 4])
def test_unet_field_of_view_matches_gradient_support(scales: int) -> None:
    torch.manual_seed(scales)
    model = UNet(scales=scales, channels=8)
    size = 2 ** (scales + 1) * 12
    reach = measured_extent(model, size, range(2**scales))
    assert reach == support_extent(model)
    assert field_of_view(model) == reach[0] + reach[1] + 1


@pytest.mark.parametrize(("scales", "s"), [(1, 2), (2, 2), (3, 2), (2, 3)])
def test_space_to_depth_field_of_view_matches_gradient_support(scales: int, s: int) -> None:
    """On s x s blocks the reach is the block UNet's reach in blocks, times s, per output position."""
    torch.manual_seed(scales)
    model = UNet(scales=scales, channels=8, space_to_depth=s)
    assert model.multiple == 2**scales * s
    size = model.multiple * 24  # the reach in pixels is s times the block UNet's: keep it off the edges
    reach = measured_extent(model, size, range(model.multiple))
    assert reach == support_extent(model)


def test_space_to_depth_is_lossless_rearrangement() -> None:
    """Blocks in, blocks out: the network sees every pixel, and the output keeps the input's shape."""
    model = UNet(scales=3, channels=8, space_to_depth=2).eval()
    x = torch.rand(2, 1, 64, 48)
    assert model(x).shape == x.shape
    assert model.inc[0].in_channels == 4 and model.outc.out_channels == 4
    assert field_of_view(model) > 2 * field_of_view(UNet(scales=3, channels=8)) - 8


def test_paper_scales_have_large_fields_of_view() -> None:
    assert field_of_view(UNet(scales=4)) == 245
    assert field_of_view(UNet(scales=6)) == 1013
    assert field_of_view(DnCNN()) == 41
    assert field_of_view(SmallUNet()) == 46


@pytest.mark.parametrize("model", [SmallUNet(), DnCNN(depth=5, channels=8)], ids=["small_unet", "dncnn"])
def test_baseline_field_of_view_matches_gradient_support(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    positions = range(2) if isinstance(model, SmallUNet) else range(1)
    assert measured_extent(model, 128, positions) == support_extent(model)


@pytest.mark.parametrize("model", [UNet(scales=4, channels=8), DnCNN(depth=5, channels=8), SmallUNet()])
def test_output_shape_equals_input_shape(model: torch.nn.Module) -> None:
    x = torch.rand(2, 1, 64, 96)
    assert model.eval()(x).shape == x.shape


def test_fov_grows_with_scales_not_parameters() -> None:
    # the paper's point: 4 -> 6 scales multiplies the FoV by ~4 at ~1.5x the parameters
    small, large = UNet(scales=4, channels=32), UNet(scales=6, channels=32)
    assert field_of_view(large) / field_of_view(small) > 4
    assert count_parameters(large) / count_parameters(small) < 1.6
