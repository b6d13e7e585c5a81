"""Each raw frame's producer ``meta`` and ``exposure_s`` are in the recording, and a replay sends them.

Before session 31 the recorder kept neither: docs/service.md said "per-frame ``meta`` is not recorded
either, so replayed frames carry an empty ``meta``", and every replayed frame had the series' exposure.
In-situ work loses exactly what rides there (stage temperature, gas pressure, tilt, beam current). Now
``raw/meta`` (bytes, per-row ``meta_start`` / ``meta_length``) and ``raw/exposure_s`` hold them
(formats/frame_meta.py). Checked on a service fed over ZeroMQ on loopback through part rolls, replayed
to a SUB and re-recorded; on a part written before them; for a process killed between a row's meta and
its ``complete``; and for a meta near the wire's 64 KiB header limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from conftest import free_port, wait_until

from sbd_stream.config import RecordSettings, load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import AcqFile, open_recording, recording_parts
from sbd_stream.frames import SERVICE_META_KEYS, Frame, FrameHeader, own_keys_renamed
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    MAX_HEADER_BYTES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    decode,
    encode_frame,
    encode_series,
)
from sbd_stream.service.build import build_pipeline, run_replay
from sbd_stream.service.demo import Collector
from sbd_stream.service.sink import RecorderSink
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.replay import ReplaySource

pytestmark = pytest.mark.integration

ACQ = "insitu"
N = 9
SHAPE = (32, 32)


def _meta(q: int) -> dict:
    """What an in-situ producer says about frame ``q``: every third frame nothing; frame 1 also a key the
    service sets itself (``blank``), which the input passes on as ``meta.blank``."""
    if q % 3 == 0:
        return {}
    meta = {"stage_temperature_K": 300.0 + 0.5 * q, "gas_pressure_Pa": 1e-3 * q, "tilt_deg": [q, -q]}
    meta["note"] = f"heating ramp \u2603 {q}"
    if q == 1:
        meta["blank"] = True
    return meta


def _exposure(q: int) -> float:
    return 0.01 + 0.001 * q


def _recorded(meta: dict) -> dict:
    """The meta as the service received it: a clashing key renamed ``meta.<key>``."""
    return own_keys_renamed(meta) or meta


def _producer_keys(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in SERVICE_META_KEYS}


def _replayed(path: Path) -> list[Frame]:
    got: list[Frame] = []
    ReplaySource(path, got.append, lambda _msg: None).run()
    return got


@pytest.mark.timeout(240)
def test_meta_and_exposure_sent_over_zeromq_are_recorded_through_rolls_and_replayed_to_a_sub(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    den = Denoiser.load("onnxruntime", tiny_engine_dir)
    overrides = {
        "ingest": {"endpoint": "tcp://127.0.0.1:*", "mode": "bind", "rcvhwm": 0},
        "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000},
        "record": {"directory": str(tmp_path / "live"), "min_free_bytes": 0, "max_file_bytes": 12_000},
        "metrics": {"enabled": False},
        "lanes": {"live": False},
        "denoise": {"batch_frames": 2},
    }
    ctx = zmq.Context.instance()
    pipe = build_pipeline(load_settings(overrides=overrides), den, context=ctx)
    pipe.start()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    rng = np.random.default_rng(31)
    try:
        pub.connect(pipe.source.endpoint)  # type: ignore[union-attr]
        probe = np.zeros(SHAPE, np.uint16)
        received = lambda: pipe.metrics.value("sbd_frames_received_total")  # noqa: E731
        assert wait_until(lambda: (pub.send_multipart(encode_frame(probe, "probe", 0, 1.7e9)), received())[1])
        for q in range(N):
            frame = rng.poisson(0.45, SHAPE).astype(np.uint16)
            msg = encode_frame(frame, ACQ, q, 1.7e9 + 0.025 * q, exposure_s=_exposure(q), meta=_meta(q))
            pub.send_multipart(msg)
        done = lambda: pipe.metrics.value("sbd_frames_recorded_total", {"kind": "denoised"})  # noqa: E731
        assert wait_until(lambda: done() >= N + 1, 120)
    finally:
        pub.close(0)
        pipe.stop()
    path = tmp_path / "live" / f"{ACQ}.nxs"
    parts = recording_parts(path)
    assert len(parts) >= 3  # rolled: every row's meta in its own frame's part

    # replayed in-process (``sbd-stream replay``'s run_replay) to a SUB on loopback, and re-recorded
    port = free_port(ctx)
    col = Collector(f"tcp://127.0.0.1:{port}", context=ctx).start()  # dials before replay binds
    overrides["publish"] = {"endpoint": f"tcp://127.0.0.1:{port}", "sndhwm": 1000}
    overrides["record"] = {"directory": str(tmp_path / "again"), "min_free_bytes": 0}
    try:
        run_replay(load_settings(overrides=overrides), den, path, settle_s=3.0)
        assert col.series_end.wait(60)
    finally:
        col.close()
    live = {m.seq: m.header for m in col.frames(b"denoised")}
    assert sorted(live) == list(range(N))
    for q, h in live.items():  # what the SUB read: the producer's meta (renamed as live) and exposure
        assert _producer_keys(h.meta) == _recorded(_meta(q)), q
        assert h.exposure_s == _exposure(q), q

    from sbd_stream.formats.frame_meta import recorded_meta  # the reading helper

    for where in (path, tmp_path / "again" / f"{ACQ}.nxs"):  # live, and its replay re-recorded
        rows = list(recorded_meta(where))
        assert [(r.seq, r.meta, r.exposure_s) for r in rows] == [
            (q, _recorded(_meta(q)), _exposure(q)) for q in range(N)
        ], where
    with h5py.File(parts[0], "r") as f:  # the docs' h5py recipe
        g = f["raw"]
        n = len(g["complete"])
        start, length = g["meta_start"][:n], g["meta_length"][:n]
        rows = zip(start, length, strict=True)
        metas = [json.loads(bytes(g["meta"][s : s + k])) if k else {} for s, k in rows]
        assert metas == [_recorded(_meta(int(q))) for q in g["seq"][:n]]
        assert list(g["exposure_s"][:n]) == [_exposure(int(q)) for q in g["seq"][:n]]


def _record(directory: Path, acq: str, seqs: range, meta=_meta, split: int = -1) -> None:
    """Raw frames as the service records them: wire bytes decoded, handed to the ``RecorderSink``; a
    ``series_start`` before frame ``split`` (its frames go to a second part)."""
    sink = RecorderSink(Recorder(RecordSettings(directory=directory, min_free_bytes=0), Metrics()))
    sink.start()
    for q in seqs:
        if q == split:
            sink.series_arrived(decode(encode_series(TOPIC_SERIES_START, acq, 1.7e9 + q)))  # type: ignore[arg-type]
        frame = np.full(SHAPE, q, np.uint16)
        msg = decode(encode_frame(frame, acq, q, 1.7e9 + q, exposure_s=_exposure(q), meta=meta(q)))
        sink.raw(Frame(msg.header, np.array(msg.data)))  # type: ignore[union-attr]
    end = decode(encode_series(TOPIC_SERIES_END, acq, 1.8e9))
    sink.series_done(end)  # type: ignore[arg-type]
    sink.stop()
    sink.join(30)


@pytest.mark.timeout(60)
def test_a_part_written_before_frame_meta_replays_empty_meta_and_the_series_exposure(tmp_path: Path) -> None:
    """A recording whose first part has session 30's raw layout (no ``meta`` / ``exposure_s``) and whose
    second part the new one: the old rows replay as before (empty meta, the series' exposure: none
    announced, so the wire default 0.0), the new rows with their own."""
    _record(tmp_path, ACQ, range(6), split=3)
    old = tmp_path / f"{ACQ}.nxs"
    assert len(recording_parts(old)) == 2
    with h5py.File(old, "r+") as f:  # the first part as written before: no meta, row index, exposure
        for name in ("meta", "meta_start", "meta_length", "exposure_s"):
            if name in f["entry/raw"]:  # (the code before this fix wrote none: the first part as is)
                del f[f"entry/raw/{name}"]
    got = [(fr.header.seq, fr.header.meta, fr.header.exposure_s) for fr in _replayed(old)]
    want = [(q, _recorded(_meta(q)), _exposure(q)) for q in range(3, 6)]
    assert got == [(q, {}, 0.0) for q in range(3)] + want
    from sbd_stream.formats.frame_meta import recorded_meta

    back = [(r.seq, r.meta, r.exposure_s) for r in recorded_meta(old)]
    assert back[:3] == [(q, None, None) for q in range(3)]  # not recorded, said as such
    assert back[3:] == [(q, _recorded(_meta(q)), _exposure(q)) for q in range(3, 6)]


def _header_bytes(meta: dict) -> int:
    """The wire header's size of frame 1 of ``_record`` with ``meta``."""
    zeros = np.zeros(SHAPE, np.uint16)
    return len(encode_frame(zeros, ACQ, 1, 1.7e9 + 1, exposure_s=_exposure(1), meta=meta)[1])


@pytest.mark.timeout(60)
def test_a_meta_near_the_64_kib_header_limit_is_recorded_whole(tmp_path: Path) -> None:
    """The largest meta a producer can send (its header at the wire's 64 KiB): recorded and replayed
    byte for byte, over several of ``raw/meta``'s chunks; small rows around it stay in place."""
    big = {"spectrum": [round(0.001 * i, 3) for i in range(9000)]}
    pad = MAX_HEADER_BYTES - _header_bytes(big)
    big["pad"] = "x" * (pad - len(',"pad":""'))  # the header exactly at the limit
    assert _header_bytes(big) == MAX_HEADER_BYTES
    metas = {0: {"T": 1}, 1: big, 2: {"T": 3}}
    _record(tmp_path, ACQ, range(3), meta=metas.__getitem__)
    got = [(fr.header.seq, fr.header.meta) for fr in _replayed(tmp_path / f"{ACQ}.nxs")]
    assert got == sorted(metas.items())
    with open_recording(tmp_path / f"{ACQ}.nxs") as f:
        assert f["raw/meta"].shape[0] > 3 * f["raw/meta"].chunks[0]  # spans chunks


CRASH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from pathlib import Path
    from sbd_stream.config import RecordSettings
    from sbd_stream.formats import recording
    d = Path(sys.argv[1])
    s = RecordSettings(directory=d, compression="none")
    af = recording.AcqFile(d / "crash.nxs", (8, 8), np.uint16, s, {"acq": "crash", "created": 1.7e9})
    for q in range(2):
        af.append("raw", q, 1.7e9 + q, np.zeros((8, 8), np.uint16), meta={"T": q}, exposure_s=0.5)
    af.flush()
    from sbd_stream.formats.row_writes import RowColumns
    mark = RowColumns.mark
    def killed_before_complete(self, i):
        if self.kind == "raw":  # the row's frame, meta and values are written: die here
            af.f.flush()
            os._exit(9)
        mark(self, i)
    RowColumns.mark = killed_before_complete
    af.append("raw", 2, 1.7e9 + 2, np.zeros((8, 8), np.uint16), meta={"T": "killed" * 50}, exposure_s=9.0)
    """
)


@pytest.mark.timeout(60)
def test_a_crash_between_a_rows_meta_and_its_complete_leaves_the_row_uncounted(tmp_path: Path) -> None:
    """A process killed after writing row 2's meta, exposure and index but before its ``complete``:
    readers see rows 0 and 1 only, and the part reopened writes the next row's meta over row 2's."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    crash = [sys.executable, "-c", CRASH, str(tmp_path)]
    done = subprocess.run(crash, env=env, capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    path = tmp_path / "crash.nxs"
    with open_recording(path) as f:
        assert f["raw/meta"].shape[0] > 2 * len(b'{"T":0}')  # the killed row's meta is in the file ...
        assert f["raw/meta_start"].shape[0] == 3 and len(f["raw/complete"]) == 2
    got = [(fr.header.seq, fr.header.meta, fr.header.exposure_s) for fr in _replayed(path)]
    assert got == [(0, {"T": 0}, 0.5), (1, {"T": 1}, 0.5)]  # ... but no counted row has it
    h5clear = [sys.executable, "-m", "sbd_stream.sinks.h5clear", str(path)]
    subprocess.run(h5clear, env=env, check=True, capture_output=True)
    af = AcqFile.reopen(path, RecordSettings(directory=tmp_path, compression="none"))
    af.append("raw", 2, 1.7e9 + 2, np.zeros((8, 8), np.uint16), meta={"T": 2}, exposure_s=0.25)
    af.close()
    got = [(fr.header.seq, fr.header.meta, fr.header.exposure_s) for fr in _replayed(path)]
    assert got == [(0, {"T": 0}, 0.5), (1, {"T": 1}, 0.5), (2, {"T": 2}, 0.25)]
    with open_recording(path) as f:
        assert list(f["raw/meta_start"][:3]) == [0, 7, 14]  # written over the killed row's meta


@pytest.mark.timeout(120)
def test_hyperspy_and_silx_open_a_recording_whose_rows_carry_meta(tmp_path: Path) -> None:
    """``raw/meta`` (bytes) and its per-row index beside the frames keep the NXdata group readable: plain
    ``hs.load`` (every signal with units) and silx's NXdata, as ``test_recording_nexus`` checks."""
    from test_recording_nexus import PIXEL_A, SAMPLING, _check_plain_load, _check_silx

    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), Metrics(), sampling=SAMPLING)
    for q in range(4):
        frame = np.random.default_rng(q).poisson(0.45, (64, 64)).astype(np.uint16)
        rec.record("raw", FrameHeader(ACQ, q, 1.7e9 + q, (64, 64), "uint16", _exposure(q), _meta(q)), frame)
        rec.write(rec.queue.get_nowait())  # type: ignore[arg-type]
        rec.write(RecordItem("denoised", ACQ, q, 1.7e9 + q, frame.astype(np.float32)))
    rec.close_all()
    path = tmp_path / f"{ACQ}.nxs"
    with open_recording(path) as f:
        assert f["raw/meta"].shape[0] > 0 and list(f["raw/exposure_s"]) == [_exposure(q) for q in range(4)]
    _check_plain_load(path, 4, PIXEL_A)
    _check_silx(path, 4, PIXEL_A, kinds=("raw", "denoised"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dialect", ["dectris-stream-v1", "dectris-stream-v2"])
def test_a_dectris_frames_detector_meta_and_real_time_are_recorded_and_replayed(
    tmp_path: Path, dialect: str
) -> None:
    """What the DECTRIS dialect states per frame (its series and frame number, the detector's own times:
    v1 ``start_time_ns`` / ``stop_time_ns`` / ``real_time_ns``, the encoding and hash of the payload as
    received; v2 ``channel`` and ``start_time_s``) and its exposure (``real_time``) replay as recorded."""
    from sbd_stream.config import DectrisInput
    from sbd_stream.sources.dectris.acquisition import DectrisDialect
    from sbd_stream.sources.dectris.sim import v1_series, v2_end, v2_image, v2_start
    from sbd_stream.sources.dialect import Emitter

    data = [np.full((8, 8), i, np.uint16) for i in range(3)]
    if dialect == "dectris-stream-v1":
        msgs = v1_series(data, 41)
    else:
        msgs = [
            [v2_start(41, "u", (8, 8), "uint16", 3)],
            *[[v2_image(f, 41, "u", i)] for i, f in enumerate(data)],
        ]
        msgs.append([v2_end(41, "u")])
    m = Metrics()
    sink = RecorderSink(Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), m))
    seen: list[Frame] = []
    ing = DectrisDialect(
        DectrisInput.model_validate({"dialect": dialect}),
        10**8,
        Emitter(m, lambda fr: (seen.append(fr), sink.raw(fr)), sink.series_arrived),
    )
    sink.start()
    for msg in msgs:
        ing.handle(msg)
    sink.stop()
    sink.join(30)
    (path,) = tmp_path.glob("*.nxs")
    got = [(fr.header.seq, fr.header.meta, fr.header.exposure_s) for fr in _replayed(path)]
    assert got == [(fr.header.seq, fr.header.meta, fr.header.exposure_s) for fr in seen]
    assert [meta["frame"] for _, meta, _ in got] == [0, 1, 2] and {e for _, _, e in got} == {0.025}
    want = {"start_time_ns", "real_time_ns", "encoding"} if dialect.endswith("v1") else {"start_time_s"}
    assert all(want <= set(meta) for _, meta, _ in got)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("meta_start", 10**12, "outside raw/meta"),
        ("meta_length", 10**9, "outside raw/meta"),
        ("meta", 0, "no JSON"),
    ],
)
def test_a_damaged_meta_index_or_json_is_one_recording_error(
    tmp_path: Path, name: str, value: int, why: str
) -> None:
    """A crafted or damaged row index (pointing past ``raw/meta``, or a length past the bound) or bytes
    that are no JSON object: a ``RecordingError`` naming the part and row, never a huge read or a
    traceback from ``json``; replay refuses it the same way."""
    from sbd_stream.formats.frame_meta import recorded_meta
    from sbd_stream.formats.limits import RecordingError

    _record(tmp_path, ACQ, range(3))
    path = tmp_path / f"{ACQ}.nxs"
    with h5py.File(path, "r+") as f:
        f[f"entry/raw/{name}"][1] = value  # row 1, or a byte of its JSON (row 0 has none)
    with pytest.raises(RecordingError, match=why):
        list(recorded_meta(path))
    with pytest.raises(RecordingError, match=why):
        _replayed(path)


@pytest.mark.timeout(60)
def test_a_meta_with_a_lone_surrogate_escape_is_recorded_and_the_acquisition_goes_on(tmp_path: Path) -> None:
    """The wire's JSON admits ``"\\ud800"`` (a lone surrogate, no UTF-8 character): stored as its escape.
    Encoded as UTF-8 it raised in the writer, which ended the acquisition's recording as a write error."""
    metas = {0: {"label": "\ud800 half a pair"}, 1: {"label": "caf\u00e9 \u2603"}, 2: {}}
    _record(tmp_path, ACQ, range(3), meta=metas.__getitem__)
    got = [(fr.header.seq, fr.header.meta) for fr in _replayed(tmp_path / f"{ACQ}.nxs")]
    assert got == sorted(metas.items())
