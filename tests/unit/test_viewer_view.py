"""Live viewer, pure parts: full-resolution regions, specimen contrast, overlay alpha, pixel size, dose."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sbd_stream.config import DetectorSettings
from sbd_stream.protocol import FrameHeader
from sbd_stream.sinks.viewer import frameinfo
from sbd_stream.sinks.viewer.contrast import grid_to_region, local_windows, specimen_grid, to_gray8, window
from sbd_stream.sinks.viewer.render import crop_for_display, diverging_rgba, encode_png, llr_limit
from sbd_stream.sinks.viewer.store import FrameStore


def _h(shape: tuple[int, int], seq: int = 0, meta: dict | None = None, acq: str = "a") -> FrameHeader:
    return FrameHeader(acq, seq, 1000.0 + seq, shape, "float32", 0.025, meta or {})


def test_region_is_shown_at_full_resolution_and_large_regions_binned() -> None:
    a = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)
    img, region, f = crop_for_display(a, (100, 200, 400, 500), 640)  # 300 px region, 640 px canvas
    assert f == 1 and region == (100, 200, 400, 500) and img.shape == (300, 300)
    np.testing.assert_array_equal(img, a[200:500, 100:400])  # 1:1 detector pixels, no resampling
    img, region, f = crop_for_display(a, None, 640)  # the whole frame: binned 2 x 2
    assert f == 2 and img.shape == (512, 512) and region == (0, 0, 1024, 1024)
    img, region, f = crop_for_display(a, (-50, -50, 2000, 10), 640)  # clamped to the frame
    assert region[:2] == (0, 0) and region[2] <= 1024 and f == 2
    with pytest.raises(ValueError):
        crop_for_display(a, (2000, 2000, 3000, 3000), 640)


def test_overlay_png_is_transparent_where_no_column_was_painted() -> None:
    llr = np.zeros((8, 8), np.float32)
    llr[2:4, 2:4], llr[5:7, 5:7] = 6.0, -3.0
    assert llr_limit(llr, 100) == 6.0
    rgba = diverging_rgba(llr, 6.0)
    back = np.asarray(Image.open(io.BytesIO(encode_png(rgba))))
    assert back.shape == (8, 8, 4) and back[0, 0, 3] == 0 and back[2, 2, 3] == 255 and back[5, 5, 3] == 255
    assert back[2, 2, 0] > 200 and back[5, 5, 2] > back[5, 5, 0]  # + yellow, - blue


def _specimen_frame() -> tuple[np.ndarray, np.ndarray]:
    """Vacuum 1.0 (flat, a little noise) left, a lattice of +-0.3 right; the truth of which is which."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    img = 1.0 + 0.005 * rng.standard_normal((256, 256))
    spec = xx >= 160
    img[spec] += 0.3 * (np.cos(2 * np.pi * xx[spec] / 6) * np.cos(2 * np.pi * yy[spec] / 6))
    return img.astype(np.float32), spec


def test_specimen_window_leaves_vacuum_out() -> None:
    img, spec = _specimen_frame()
    grid = specimen_grid(img, 16)
    mask = grid_to_region(grid, (16 / 256, 16 / 256), (0.0, 0.0, 1.0, 1.0), img.shape)
    assert mask[spec].mean() > 0.9 and mask[~spec].mean() < 0.1
    lo_all, hi_all = window(img, 1, 99)
    lo, hi = window(img, 1, 99, mask)
    assert lo < 0.85 and hi > 1.15  # the lattice's range, not the vacuum's +-0.01
    assert (lo, hi) == pytest.approx((lo_all, hi_all), abs=0.1)
    vac_only = window(img[:, :128], 1, 99)
    assert vac_only[1] - vac_only[0] < 0.05
    # the same mask applies to a frame at another sampling (e.g. raw at 4x finer pixels), by fractions
    m4 = grid_to_region(grid, (16 / 256, 16 / 256), (0.0, 0.5, 1.0, 1.0), (512, 512))
    assert m4[:, :100].mean() < 0.1 and m4[:, 200:].mean() > 0.9


def test_local_windows_follow_regions_but_do_not_stretch_vacuum() -> None:
    img, _ = _specimen_frame()
    img[:, 208:] = 1.0 + 0.1 * (img[:, 208:] - 1.0)  # a weak "support" beside the strong "particle"
    mask = grid_to_region(specimen_grid(img, 16), (16 / 256, 16 / 256), (0, 0, 1, 1), img.shape)
    base = window(img, 1, 99, mask)
    lo, hi = local_windows(img, 1, 99, 32, base, mask)
    assert lo.shape == img.shape
    weak = hi[:, 240] - lo[:, 240]
    assert weak.mean() < 0.5 * (base[1] - base[0])  # the weak region gets a narrower window
    assert (hi[:, 10] - lo[:, 10]).min() >= 0.99 * (base[1] - base[0])  # vacuum keeps the specimen window
    g = to_gray8(img, lo, hi)
    assert g.dtype == np.uint8 and g[:, 240].std() > 30  # the weak lattice uses the grey range


def test_pixel_size_read_from_metadata_in_order() -> None:
    det = DetectorSettings(pixel_size_A=0.06)
    raw = _h((1024, 1024))
    den_work = _h((256, 256))
    # frame meta wins
    assert frameinfo.frame_pixel(_h((256, 256), meta={"pixel_size_A": 0.24}), raw, {}, None) == (
        0.24,
        "frame meta",
    )
    # working pixel inferred from the raw frame's pixel (series meta) and the shape ratio
    px, src = frameinfo.frame_pixel(den_work, raw, {"pixel_size_A": 0.05}, det)
    assert px == pytest.approx(0.2) and "series_start" in src and "x 4" in src
    # raw frame meta beats series meta beats the settings
    raw_m = _h((1024, 1024), meta={"pixel_size_A": 0.07})
    assert frameinfo.frame_pixel(raw_m, raw_m, {"pixel_size_A": 0.05}, det)[0] == 0.07
    assert frameinfo.frame_pixel(raw, raw, {}, det) == (0.06, "detector settings")
    assert frameinfo.frame_pixel(raw, raw, {}, None) == (None, "unknown")
    # a remainder strip (1030 px binned by 4 -> 257) still reads as bin 4
    assert frameinfo.frame_pixel(_h((257, 257)), _h((1030, 1030)), {}, det)[0] == pytest.approx(0.24)


def test_dose_both_units_and_time_since_start() -> None:
    d = frameinfo.dose(_h((8, 8)), {"counts_per_px": 0.45}, None, 0.06)
    assert d["e_per_A2"] == pytest.approx(125.0) and d["source"] == "series_start meta"
    d = frameinfo.dose(_h((8, 8), meta={"dose_e_per_A2": 100.0}), {"counts_per_px": 0.45}, None, 0.06)
    assert d["counts_per_px"] == pytest.approx(0.36) and d["source"] == "raw frame meta"
    d = frameinfo.dose(None, {"dose": 9.0}, DetectorSettings(pixel_size_A=0.06, counts_per_px=0.45), 0.06)
    assert d["e_per_A2"] == pytest.approx(125.0)  # a bare "dose" is not read: its unit is not stated
    t = frameinfo.frame_time(_h((8, 8), seq=5), {"acq": "a", "ts": 1000.0})
    assert t["since_start_s"] == pytest.approx(5.0) and t["exposure_s"] == 0.025


def test_store_keeps_newest_frame_and_per_lane_latency() -> None:
    st = FrameStore()
    z = np.zeros((4, 4), np.float32)
    st.offer("denoised", FrameHeader("a", 10, 0.0, (4, 4), "float32", meta={"lane": "live"}), z)
    st.offer("denoised", FrameHeader("a", 3, 0.0, (4, 4), "float32", meta={"lane": "complete"}), z)
    newest = st.newest("denoised")
    assert newest is not None and newest.header.seq == 10  # a frame completed afterwards does not go back
    assert st.frame_for("denoised", "a", 3).header.seq == 3
    st.offer("denoised", FrameHeader("b", 0, 0.0, (4, 4), "float32"), z)  # a new acquisition starts at 0
    assert st.newest("denoised").header.acq == "b"
    import time

    lat = st.latency(window_s=time.time() + 10)  # ts 0: latencies of ~time.time(), inside this window
    assert set(lat) == {"denoised/live", "denoised/complete", "denoised"}
    assert lat["denoised/live"]["lane"] == "live" and lat["denoised/live"]["n"] == 1


def test_lane_named_in_the_header_wins_over_the_lane_the_path_implies() -> None:
    """Outputs on a service's PUB are its live lane (the viewer says so); a sender naming a lane wins."""
    st = FrameStore()
    z = np.zeros((4, 4), np.float32)
    st.offer("denoised", FrameHeader("a", 1, 0.0, (4, 4), "float32"), z, lane="live")
    assert st.newest("denoised").lane == "live"
    st.offer(
        "denoised", FrameHeader("a", 2, 0.0, (4, 4), "float32", meta={"lane": "complete"}), z, lane="live"
    )
    assert st.newest("denoised").lane == "complete"
    st.offer("raw", FrameHeader("a", 2, 0.0, (4, 4), "float32"), z)
    assert st.newest("raw").lane is None
    assert st.held("denoised", "a") == (1, 2) and st.held("denoised", "b") is None
    assert st.frame_for("denoised", "a", 7) is None  # not kept: no stand-in chosen here
