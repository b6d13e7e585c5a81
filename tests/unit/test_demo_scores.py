"""The demo summary's numbers from hand-made inputs: latency percentiles, the fewest frames in a second,
the PSNR of the scored frames (its range, the paper metric's dose scaling), strict JSON, and the
complete lane read back from a real recording."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.compute.quality import PAPER_COUNTS_PER_PX, psnr
from sbd_stream.config import RecordSettings, load_settings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.demo import Received, _mean, _scores, complete_lane, live_lane, percentiles
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.emulator import EmulatorSettings, FrameSource

SAMPLES = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def _shown(times: list[float], latencies: list[float]) -> list[Received]:
    return [
        Received(b"denoised", "a", k, None, None, FrameHeader("a", k, t - lat, (4, 4), "float32"), t)
        for k, (t, lat) in enumerate(zip(times, latencies, strict=True))
    ]


def test_latency_percentiles_are_at_q_percent_of_the_frames() -> None:
    """Every frame of the old test had one latency, so percentiles taken at q/100 (all near the
    fastest frame) passed."""
    p = percentiles([float(v) for v in range(100)])
    assert (p["p50"], p["p90"], p["p99"]) == pytest.approx((49.5, 89.1, 98.01))
    lat = [0.001 * k for k in range(100)]  # 0..99 ms, shuffled over the frames
    lane = live_lane(_shown([100.0 + 0.01 * k for k in range(100)], lat[::-1]))
    assert (lane["latency_s"]["p50"], lane["latency_s"]["p99"]) == pytest.approx((0.0495, 0.09801))
    assert lane["latency_max_s"] == pytest.approx(0.099)


def test_the_fewest_frames_in_a_second_is_the_minimum() -> None:
    times = [100.0 + 0.1 * k for k in range(10)] + [101.0 + 0.2 * k for k in range(5)] + [102.5]
    lane = live_lane(_shown(times, [0.01] * len(times)))
    assert lane["per_second"] == [10, 5] and lane["per_second_min"] == 5 and lane["per_second_mean"] == 7.5


def _frames(dose: float, n: int = 3, first_seq: int = 0) -> tuple[FrameSource, list[Received], dict]:
    """Real truths (the bundled specimen, 64^2: not flat, min well above 0), a near-perfect denoiser's
    output (truth x 1.001) and Poisson counts as sent, for frames ``first_seq`` .. + n."""
    cfg = EmulatorSettings(source=SAMPLES, shape=(64, 64), dose=dose, pixel_size_A=0.060, first_seq=first_seq)
    src, rng = FrameSource(cfg), np.random.default_rng(0)
    den, sent = [], {}
    for k in range(n):
        truth = src.truth_of_frame(k)
        assert truth is not None and float(truth.min()) > 0.5 * dose  # max - min is not the peak
        seq = first_seq + k
        head = FrameHeader("a", seq, 0.0, (64, 64), "float32")
        den.append(Received(b"denoised", "a", seq, None, truth * np.float32(1.001), head))
        sent[seq] = rng.poisson(truth).astype(np.uint16)
    return src, den, sent


def test_raw_and_denoised_psnr_take_the_truth_peak_as_range() -> None:
    """README: ``psnr_*_db`` with the truth's peak as range (not max - min, which a flat truth makes
    ~0: -64 dB)."""
    src, den, sent = _frames(PAPER_COUNTS_PER_PX)
    s = _scores(den, src, sent, 0)
    for k, r in enumerate(den):
        truth = src.truth_of_frame(k)
        assert s["raw"][k] == pytest.approx(psnr(sent[r.seq].astype(np.float32), truth, float(truth.max())))
        assert s["den"][k] == pytest.approx(psnr(r.data, truth, float(truth.max())))


def test_paper_psnr_is_scaled_to_its_dose_for_raw_and_denoised_alike() -> None:
    """At 1.8 counts/px both the frame and its truth are scaled by 0.45 / 1.8 before the clamp to
    [0, 1]: scaling the truth only scored a near-perfect denoiser ~5 dB; scaling neither, Infinity."""
    src, den, sent = _frames(1.8, first_seq=1000)
    s = _scores(den, src, sent, 1000, scale=PAPER_COUNTS_PER_PX / 1.8)
    assert len(s["den_paper"]) == 3 and min(s["den_paper"]) > 50.0 and math.isfinite(max(s["den_paper"]))
    src45, den45, _ = _frames(PAPER_COUNTS_PER_PX)
    at45 = _scores(den45, src45, {r.seq: np.zeros((64, 64)) for r in den45}, 0)["den_paper"]
    assert s["den_paper"] == pytest.approx(at45, abs=0.5)  # the same frames score the same at either dose
    assert all(3.0 < v < 15.0 for v in s["raw_paper"])


def test_a_mean_that_is_not_finite_is_null_in_strict_json() -> None:
    assert _mean([]) is None and _mean([1.0, math.inf]) is None and _mean([1.0, math.nan]) is None
    assert _mean([1.0, 3.0]) == 2.0
    json.dumps({"psnr_denoised_db": _mean([math.inf]), "psnr_raw_db": _mean([])}, allow_nan=False)


def test_the_complete_lane_counts_complete_rows_and_needs_raw_frames(
    tmp_path: Path,
) -> None:
    """A real recording: 10 raw frames, denoised rows 7-9 left incomplete (the service stopped while
    writing them), and an acquisition with denoised frames but no raw frame at all."""
    rec = Recorder(
        RecordSettings(directory=tmp_path, min_free_bytes=0, record_llr=False, compression="none"), Metrics()
    )
    for q in range(10):
        rec.write(RecordItem("raw", "a", q, 100.0 + 0.025 * q, np.ones((32, 32), np.uint16)))
        rec.write(RecordItem("denoised", "a", q, 100.0 + 0.025 * q, np.ones((32, 32), np.float32)))
    rec.write(RecordItem("denoised", "b", 0, 100.0, np.ones((32, 32), np.float32)))
    rec.close_all()
    (path,) = sorted(tmp_path.glob("a*.nxs"))
    with h5py.File(path, "r+") as f:
        f["denoised/complete"][7:10] = 0
    s = load_settings(overrides={"record": {"directory": str(tmp_path), "enabled": True}})
    a = complete_lane(s, Metrics(), "a")["recording"]
    assert a["raw_frames"] == 10 and a["denoised_frames"] == 7 and a["all_denoised"] is False
    b = complete_lane(s, Metrics(), "b")["recording"]
    assert b["raw_frames"] == 0 and b["all_denoised"] is False  # nothing recorded is not "all denoised"
