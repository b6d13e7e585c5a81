"""A frame too small for the likelihood is recorded with ``llr/vacuum_counts`` NaN, not 0 (audit h35, D1).

Why: docs/service.md (Recording format, ``llr/vacuum_counts``) says the column is 0 for a blank frame and
NaN where no level exists (a frame under the likelihood's 21 working pixels a side). The batch stage
states 0 for such a frame, and the recording kept that 0, the same value as a blank frame's, so a reader
could not tell "no level estimated" from "no beam" by the column. Checked on a real pipeline (the tiny
engine on the CPU, recorder, publisher on loopback) and the real HDF5 file it writes, then read back as a
replay does (``published``: the header it re-sends must be the live one).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from conftest import await_subscriber, wait_until

from sbd_stream.config import load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.column_table import recorded_columns
from sbd_stream.formats.recording import recording_parts
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector
from sbd_stream.sinks.recorder import open_recording

pytestmark = pytest.mark.integration

ACQ = "small"
BIG, SMALL = (96, 96), (9, 11)  # the small one: under the likelihood's minimum side (5 A at 0.3 A: 17 px)
# seq -> (shape, beam): a scored frame, one too small, a blank one, a blank one too small
FRAMES = {0: (BIG, True), 1: (SMALL, True), 2: (BIG, False), 3: (SMALL, False)}


def _frame(rng: np.random.Generator, shape: tuple[int, int], beam: bool) -> np.ndarray:
    if not beam:
        return np.zeros(shape, np.uint16)
    return rng.poisson(0.45, shape).astype(np.uint16)  # vacuum at the configured dose


def _recorded_levels(path: Path) -> dict[int, float]:
    """seq -> the raw ``llr/vacuum_counts`` value of its complete row, over every part."""
    out: dict[int, float] = {}
    for part in recording_parts(path):
        with open_recording(part) as f:
            g = f["llr"]
            n = len(g["complete"])
            out.update(zip(g["seq"][:n].tolist(), g["vacuum_counts"][:n].tolist(), strict=True))
    return out


@pytest.mark.timeout(180)
def test_a_frame_too_small_to_score_records_nan_a_blank_frame_zero(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    den = Denoiser.load("onnxruntime", tiny_engine_dir)
    s = load_settings(
        overrides={
            "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
            "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000},
            "record": {"directory": str(tmp_path), "min_free_bytes": 0},
            "metrics": {"enabled": False},
            "lanes": {"live": False},  # one lane: every frame published and recorded
            "denoise": {"batch_frames": 1, "likelihood": {"enabled": True}},
        }
    )
    ctx = zmq.Context.instance()
    pipe = build_pipeline(s, den, source=None, context=ctx)
    pipe.start()
    assert pipe.publisher is not None
    col = Collector(pipe.publisher.endpoint, context=ctx).start()
    rng = np.random.default_rng(35)
    try:
        await_subscriber(pipe.publisher, col)
        for seq, (shape, beam) in FRAMES.items():
            data = _frame(rng, shape, beam)
            pipe.handle_frame(Frame(FrameHeader(ACQ, seq, 1.7e9 + 0.025 * seq, shape, "uint16"), data))
        assert wait_until(lambda: len(col.frames(b"llr")) == len(FRAMES), 120)
    finally:
        pipe.stop()
        col.close()
    live = {m.seq: m.header.meta for m in col.frames(b"llr")}
    assert [bool(live[q].get("blank")) for q in FRAMES] == [not beam for _, beam in FRAMES.values()]
    assert live[0]["vacuum_counts"] > 0 and live[1]["n_columns"] == 0  # scored; too small: no table
    # the header leaves both 0 (blank) and none (too small) out
    assert all("vacuum_counts" not in live[q] for q in (1, 2, 3)), {q: live[q] for q in (1, 2, 3)}

    path = tmp_path / f"{ACQ}.nxs"
    levels = _recorded_levels(path)
    assert sorted(levels) == list(FRAMES)
    assert levels[0] > 0
    assert math.isnan(levels[1]), levels  # too small: no level (was 0.0, a blank frame's value)
    assert levels[2] == 0.0 and levels[3] == 0.0, levels  # blank, whatever the size: 0
    with h5py.File(recording_parts(path)[0], "r") as f:  # plain h5py sees the same (closed file)
        assert f["llr/vacuum_counts"].dtype == np.float64

    rows = {r.seq: r for r in recorded_columns(path)}
    assert rows[1].vacuum_counts is None and rows[1].blank is False  # read back: "none stated"
    assert rows[2].vacuum_counts == 0.0 and rows[2].blank is True
    for q, r in rows.items():  # what a replay re-publishes: the live header's own keys
        meta, _ = r.published()
        assert ("vacuum_counts" in meta) == ("vacuum_counts" in live[q]), q
