"""``FrameStore`` edges a mutation round (h29b) found unpinned: when a frame starts a new series (the
1 ms ``ts`` tolerance both ways, a ``series_start`` of another stream, a frame numbered as the newest),
what ``newest`` shows, the ring's bounds, and the page's rate and latency window (driven by a fake
clock in place of the store's ``time.time``: no wall-clock bounds)."""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.protocol import FrameHeader
from sbd_stream.sinks.viewer import store as store_mod
from sbd_stream.sinks.viewer.store import FrameStore

Z = np.zeros((2, 2), np.uint8)


def _h(seq: int, ts: float, acq: str = "a") -> FrameHeader:
    return FrameHeader(acq, seq, ts, (2, 2), "uint8")


def _series(st: FrameStore, seqs: range, t0: float = 100.0, kind: str = "raw", acq: str = "a") -> None:
    for q in seqs:
        st.offer(kind, _h(q, t0 + 0.1 * q, acq), Z)


def test_series_t0_takes_a_start_stamped_the_same_as_the_frame() -> None:
    st = FrameStore()
    st.series_start("a", 100.0, {}, ("raw",))
    assert st.series_t0("a", 100.0) == 100.0 and st.series_t0("a", 99.0) is None


def test_the_newest_number_again_stamped_later_starts_a_new_series() -> None:
    st = FrameStore()
    _series(st, range(6))  # 0..5, ts 100.0..100.5
    st.offer("raw", _h(5, 110.0), Z)  # numbered as the newest, 9.5 s later: the sender counted anew
    assert st.held("raw", "a") == (5, 5)


def test_a_retransmit_within_1_ms_is_not_a_new_series() -> None:
    st = FrameStore()
    _series(st, range(6))
    st.offer("raw", _h(5, 100.5 + 0.0005), Z)  # the same frame, its ts rounded
    st.offer("raw", _h(4, 100.4 + 0.0009), Z)
    assert st.held("raw", "a") == (0, 5)


def test_seq_0_again_stamped_within_1_ms_before_the_newest_starts_a_new_series() -> None:
    st = FrameStore()
    _series(st, range(4))  # newest: 3 at ts 100.3
    st.offer("raw", _h(0, 100.3 - 0.0005), Z)  # 0 again, its ts the same up to rounding: a restart
    assert st.held("raw", "a") == (0, 0)
    st.offer("raw", _h(1, 100.4), Z)  # the new series goes on: its 0 is not dropped
    assert st.held("raw", "a") == (0, 1)


def test_the_new_series_counts_from_its_own_first_frame() -> None:
    st = FrameStore()
    _series(st, range(6))
    st.series_start("a", 200.0, {}, ("raw",))
    _series(st, range(3), t0=200.0)
    assert st.held("raw", "a") == (0, 2)


def test_a_series_start_on_the_output_stream_leaves_the_raw_series_alone() -> None:
    st = FrameStore()
    _series(st, range(6))
    st.series_start("a", 100.0, {}, ("denoised", "llr"))  # reaches the viewer after raw frames tapped
    st.offer("raw", _h(6, 100.6), Z)
    assert st.held("raw", "a") == (0, 6)


def test_newest_shows_the_last_received_frame_of_the_same_number() -> None:
    st = FrameStore()
    first, second = np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)
    st.offer("denoised", _h(5, 100.0), first)
    st.offer("denoised", _h(5, 100.0), second)  # e.g. the complete lane's frame of that number
    assert st.newest("denoised").data is second


def test_newest_moves_to_another_acquisition_whatever_its_number() -> None:
    st = FrameStore()
    _series(st, range(10, 12), kind="denoised")
    st.offer("denoised", _h(3, 101.0, acq="b"), Z)  # b is mid-series at a lower number
    assert st.newest("denoised").header.acq == "b"


def test_a_frame_larger_than_the_ring_budget_is_still_kept() -> None:
    st = FrameStore(raw_ring_bytes=10)
    big = np.zeros((8, 8), np.uint8)
    st.offer("raw", FrameHeader("a", 0, 1.0, (8, 8), "uint8"), big)
    assert st.frame_for("raw", "a", 0) is not None  # the page can show the one it has


def test_the_ring_keeps_max_ring_frames() -> None:
    st = FrameStore()
    _series(st, range(FrameStore.MAX_RING + 1))
    assert st.held("raw", "a") == (1, FrameStore.MAX_RING)


def test_max_acqs_acquisitions_start_times_are_remembered() -> None:
    st = FrameStore()
    for i in range(FrameStore.MAX_ACQS):
        st.series_start(f"acq{i}", 100.0 + i, {}, ("raw",))
    assert st.series_t0("acq0", 200.0) == 100.0
    st.series_start("one-more", 300.0, {}, ("raw",))
    assert st.series_t0("acq0", 200.0) is None  # the least recently started one is forgotten


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rate_and_latency_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1000.0)
    monkeypatch.setattr(store_mod.time, "time", clock)
    st = FrameStore()
    for q in range(3):  # received at 1000.0, 1000.1, 1000.2
        clock.t = 1000.0 + 0.1 * q
        st.offer("raw", _h(q, clock.t - 0.05), Z)
    clock.t = 1000.5
    assert st.rate("raw") == pytest.approx(2 / 0.2)  # 3 frames, 2 intervals
    lat = st.latency(window_s=0.45)  # receipts 0.5, 0.4 and 0.3 s ago: the last two inside
    assert lat["raw"]["n"] == 2 and lat["raw"]["max_s"] == pytest.approx(0.05)
    clock.t = 1003.0
    assert st.rate("raw") == 0.0 and st.latency()["raw"]["n"] == 3
