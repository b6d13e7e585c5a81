"""``replay --offline`` keeps what a live replay keeps of each frame: seq, ts, exposure_s and meta (h33).

A facility engineer replays one recording twice: live (``replay --record-dir``, the whole service,
which re-records every raw frame with its producer meta) and offline (``replay --offline --out``).
Before, the offline output held ``/seq``, ``/ts`` and ``/segment`` but neither the frames'
``exposure_s`` nor their ``meta`` (stage temperature, gas, tilt...), so the denoised stack could not be
joined to its conditions without the recording. Compared here frame by frame, on real files, both
ways against the source recording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.formats import frame_meta
from sbd_stream.formats.frame_meta import recorded_meta
from sbd_stream.formats.recording import open_recording, recording_parts
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")
N = 12


def _meta(q: int) -> dict:
    if q == 3:
        return {}  # a frame that came without meta: length 0, read back as {}
    return {"stage_temperature_K": 290.5 + q, "gas": "H2", "tilt_deg": [q, -0.5 * q], "note": f"f\u00e9{q}"}


def _record(directory: Path) -> Path:
    rec = Recorder(
        RecordSettings(directory=directory, min_free_bytes=0, compress_threads=0),
        Metrics(),
        card={"name": "tiny"},
        run_config={},
        sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45},
    )
    rec.write(RecordItem("series_start", "run/9", meta={"mag": 5}))
    rng = np.random.default_rng(7)
    for q in range(N):
        frame = rng.poisson(0.45, (64, 48)).astype(np.uint16)
        exposure = float("nan") if q == 5 else 0.025  # one frame whose producer stated no exposure
        rec.write(RecordItem("raw", "run/9", q, 100.0 + 0.025 * q, frame, meta=_meta(q), exposure_s=exposure))
    rec.write(RecordItem("series_end", "run/9"))
    return directory / "run_9.nxs"


def _offline_rows(out: Path) -> list[tuple]:
    with h5py.File(out, "r") as f:
        n = f["denoised"].shape[0]
        seq, ts, exposure = f["seq"][:], f["ts"][:], f["exposure_s"][:]
        metas = [m for _, m in frame_meta.block(f, 0, n, str(out))]  # the recording's layout, at the root
        assert f["meta"].attrs["content_type"] == "application/json"
    return [
        (int(s), float(t), None if np.isnan(e) else float(e), m)
        for s, t, e, m in zip(seq, ts, exposure, metas, strict=True)
    ]


def _live_rows(rec: Path) -> tuple[list[tuple], set[int]]:
    """The live replay's re-recorded raw rows, and the seq of its complete denoised rows."""
    raw = [(r.seq, r.ts, r.exposure_s, r.meta) for r in recorded_meta(rec)]
    denoised: set[int] = set()
    for part in recording_parts(rec):
        with open_recording(part) as f:
            done = np.asarray(f["denoised/complete"][:], bool)
            denoised |= {int(s) for s in np.asarray(f["denoised/seq"][: len(done)])[done]}
    return raw, denoised


@pytest.mark.timeout(300)
def test_offline_output_carries_each_frames_seq_ts_exposure_and_meta_as_a_live_replay(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    src = _record(tmp_path / "src")
    engine = ["--model", str(binning_engine_dir), "--engine", "onnxruntime"]
    live_dir = tmp_path / "live"
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_METRICS__PORT": "0"}
    proc = subprocess.run(
        [SBD, "replay", str(src), "--record-dir", str(live_dir), *engine],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "offline.h5"
    res = CliRunner().invoke(app, ["replay", str(src), "--offline", "--out", str(out), *engine])
    assert res.exit_code == 0, res.output

    source = [(r.seq, r.ts, r.exposure_s, r.meta) for r in recorded_meta(src)]
    assert [m for *_, m in source] == [_meta(q) for q in range(N)]  # what was recorded, read back
    live, live_denoised = _live_rows(live_dir / "run_9.nxs")
    offline = _offline_rows(out)
    assert len(offline) == len(live) == N
    by_seq = {row[0]: row for row in live}
    for row in offline:  # frame by frame: the live replay's re-recorded row of the same seq
        seq, ts, exposure, meta = row
        assert (seq, ts, meta) == (by_seq[seq][0], by_seq[seq][1], by_seq[seq][3]), seq
        if seq != 5:
            assert exposure == by_seq[seq][2], seq
    # the one documented difference: a frame whose producer stated no exposure is sent live with the
    # series' (here none announced: 0.0, the wire default) and so re-recorded; offline keeps "not given"
    assert by_seq[5][2] == 0.0 and offline[5][2] is None
    assert offline == source  # the source's own rows, in its row order
    assert offline[3][3] == {}  # an empty meta stays empty, not "not recorded"
    assert live_denoised == {s for s, *_ in offline}  # every frame denoised both ways
    with h5py.File(out, "r") as f:
        assert f["denoised"].shape == (N, 64, 48)
        json.loads(bytes(f["meta"][:]).decode()[: int(f["meta_length"][0])])  # plain JSON bytes
