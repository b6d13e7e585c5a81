"""``LikelihoodStage.paint`` with a per-column radius limit paints exactly the smaller disk, rim included.

``paint``'s docstring: "``limit`` lets one pass paint columns scored over two radii (the batch stage's
frames with and without evidence frames); a disk cut to it is the disk ``disk_offsets`` gives for that
radius". ``disk_offsets`` keeps ``dy^2 + dx^2 <= r^2``, so the pixels at exactly the radius belong to the
disk. The batch stage (compute/scoring.py) passes ``own_stage.cfg.radius_px**2`` as a float32 tensor; at
0.175 A per pixel the own-frame disk (0.7 A) is 4 px, an integer radius with 12 rim pixels. At 0.14, 0.1
and 0.07 A the radius in pixels lands just under a whole number (4.999999999999999): the disk must not
lose its axis pixels there.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbd_stream.compute.likelihood import LikelihoodConfig, LikelihoodStage, disk_offsets

SIZE = 96  # holds the 3 A disk at 0.07 A per pixel (43 px)


def _painted(stage: LikelihoodStage, radii: list[float]) -> list[set[tuple[int, int]]]:
    centres = torch.tensor([[i, SIZE // 2, SIZE // 2] for i in range(len(radii))])
    values = torch.arange(1, len(radii) + 1, dtype=torch.float32)  # nonzero: a painted pixel is not 0
    limit = torch.tensor([r**2 for r in radii], dtype=torch.float32)  # as scoring.py builds it
    out = stage.paint((len(radii), SIZE, SIZE), centres, values, limit)
    return [
        {(int(y) - SIZE // 2, int(x) - SIZE // 2) for y, x in (out[i] != 0).nonzero().tolist()}
        for i in range(len(radii))
    ]


@pytest.mark.parametrize(
    "pixel_A", [0.175, 0.35, 0.7, 0.14, 0.1, 0.07], ids=["4px", "2px", "1px", "5px", "7px", "10px"]
)
def test_a_disk_cut_to_the_own_frame_radius_is_the_disk_of_that_radius(pixel_A: float) -> None:
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=pixel_A, column_radius_A=3.0))
    own = LikelihoodConfig(pixel_size_A=pixel_A)  # the own-frame radius, 0.7 A: an integer number of px
    assert math.isclose(own.radius_px, round(own.radius_px)) and own.radius_px < stage.cfg.radius_px
    # 0.7 / 0.14 = 4.999999999999999: the disk must still hold the axis pixels at 5 (audit 26)
    assert len(disk_offsets(own.radius_px)) == len(disk_offsets(round(own.radius_px)))
    got = _painted(stage, [own.radius_px, math.inf])
    assert got[0] == {tuple(o) for o in disk_offsets(own.radius_px).tolist()}
    assert (0, round(own.radius_px)) in got[0]  # the rim pixel at exactly the radius
    assert got[1] == {tuple(o) for o in disk_offsets(stage.cfg.radius_px).tolist()}  # inf: the whole disk


def test_integer_and_fractional_limits_match_disk_offsets() -> None:
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=0.1, column_radius_A=0.8))  # 8 px
    radii = [1.0, 2.0, 2.5, 3.0, 5.0, 7.3]
    for r, got in zip(radii, _painted(stage, radii), strict=True):
        assert got == {tuple(o) for o in disk_offsets(r).tolist()}, r
