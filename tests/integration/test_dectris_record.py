"""DECTRIS bitshuffle-LZ4 chunks recorded as they came (``write_direct_chunk``), and the fallbacks."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq

from sbd_stream.config import DectrisInput, RecordSettings, load_settings
from sbd_stream.formats.dectris_codec import compress_framed
from sbd_stream.metrics import Metrics
from sbd_stream.service.build import build_pipeline
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.sim import v1_series, v2_end, v2_image, v2_start
from sbd_stream.sources.dialect import Emitter

SHAPE = (48, 40)


def frames(n: int, seed: int, dtype: type = np.uint16) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a few large counts so every byte plane of the shuffle carries something
    return [(rng.poisson(0.45, SHAPE) + (rng.random(SHAPE) < 0.01) * 300).astype(dtype) for _ in range(n)]


def direct(m: Metrics) -> float:
    return m.value("sbd_record_direct_chunks_total")


@pytest.mark.integration
@pytest.mark.parametrize("dialect", ["dectris-stream-v1", "dectris-stream-v2"])
def test_pipeline_records_detector_chunks_without_recompressing(
    tmp_path: Path, tiny_engine_dir: Path, dialect: str
) -> None:
    from sbd_stream.engines.denoiser import Denoiser

    n, series = 6, 41
    data = frames(n, 3)
    if dialect == "dectris-stream-v1":
        msgs = v1_series(data, series)
    else:
        uid = f"s-{series}"
        msgs = [[v2_start(series, uid, SHAPE, "uint16", n)]]
        msgs += [[v2_image(f, series, uid, i)] for i, f in enumerate(data)] + [[v2_end(series, uid)]]
    settings = load_settings(
        overrides={
            "publish": {"enabled": False},
            "record": {"directory": str(tmp_path / "rec"), "min_free_bytes": 0, "record_llr": False},
            "denoise": {"batch_frames": 2, "batch_timeout_ms": 2.0},
            "metrics": {"enabled": False},
        }
    )
    den = Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir)
    pipe = build_pipeline(settings, den, source=None, context=zmq.Context.instance())
    # the receiver's plug-in fed directly (no socket, no guard: an exception fails the test)
    ing = DectrisDialect(
        DectrisInput.model_validate({"dialect": dialect}),
        settings.ingest.max_payload_bytes,
        Emitter(pipe.metrics, pipe.handle_frame, pipe.handle_series),
    )
    pipe.start()
    try:
        for m in msgs:
            ing.handle(m)
    finally:
        pipe.stop()
    m = pipe.metrics
    assert m.value("sbd_frames_received_total") == n
    assert m.value("sbd_frames_recorded_total", {"kind": "raw"}) == n
    assert direct(m) == n and m.value("sbd_record_dropped_total") == 0
    (path,) = sorted((tmp_path / "rec").glob("*.nxs"))
    with open_recording(path) as f:
        raw = f["raw/frames"]
        assert raw.shape == (n, *SHAPE) and raw.dtype == np.uint16
        np.testing.assert_array_equal(raw[:], np.stack(data))
        np.testing.assert_array_equal(f["raw/seq"][:], np.arange(n))
        assert f["raw/complete"][:].all() and f["denoised/frames"].shape == (n, *SHAPE)
        # the stored chunk is byte for byte the one the detector sent
        _mask, stored = raw.id.read_direct_chunk((2, 0, 0))
        assert bytes(stored) == compress_framed(data[2])


def _record(tmp_path: Path, items: list[RecordItem], compression: str = "bitshuffle-lz4") -> Metrics:
    m = Metrics()
    rec = Recorder(RecordSettings(directory=str(tmp_path), min_free_bytes=0, compression=compression), m)
    for it in items:
        rec.write(it)
    rec.close_all()
    return m


def _bslz4_block(arr: np.ndarray, nelems: int) -> bytes:
    """A chunk with a non-default bitshuffle block size, as a detector configured so would send."""
    flat = np.ascontiguousarray(arr).reshape(1, -1)
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=flat, chunks=flat.shape, **hdf5plugin.Bitshuffle(nelems, cname="lz4"))
        return bytes(ds.id.read_direct_chunk((0, 0))[1])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_direct_chunks_read_back_equal_for_every_block_size(tmp_path: Path, dtype: type) -> None:
    data = frames(3, 5, dtype)
    chunks = [compress_framed(data[0]), _bslz4_block(data[1], 256), _bslz4_block(data[2], 2048)]
    items = [RecordItem("raw", "a", i, 0.0, data[i], chunk=c) for i, c in enumerate(chunks)]
    m = _record(tmp_path, items)
    assert direct(m) == 3
    with open_recording(tmp_path / "a.nxs") as f:
        np.testing.assert_array_equal(f["raw/frames"][:], np.stack(data))


def test_mismatches_fall_back_to_recompressing_and_lose_nothing(tmp_path: Path) -> None:
    data = frames(5, 7)
    good = compress_framed(data[0])
    items = [
        RecordItem("raw", "a", 0, 0.0, data[0], chunk=good),
        # a chunk that declares another uncompressed size than the frame has
        RecordItem("raw", "a", 1, 0.0, data[1], chunk=compress_framed(data[1].astype(np.uint32))),
        # truncated and header-only chunks
        RecordItem("raw", "a", 2, 0.0, data[2], chunk=compress_framed(data[2])[:5]),
        RecordItem("raw", "a", 3, 0.0, data[3], chunk=b""),
        RecordItem("raw", "a", 4, 0.0, data[4], chunk=None),
    ]
    m = _record(tmp_path / "bs", items)
    assert direct(m) == 1 and m.value("sbd_frames_recorded_total", {"kind": "raw"}) == 5
    assert m.value("sbd_record_dropped_total") == 0
    with open_recording(tmp_path / "bs" / "a.nxs") as f:
        np.testing.assert_array_equal(f["raw/frames"][:], np.stack(data))
    # a frame of another dtype than the acquisition's dataset is never cast into it: the recording
    # rolls to a new part of that dtype, where its chunk fits and is stored as it came
    odd = frames(1, 8, np.uint8)[0]
    m = _record(tmp_path / "dt", [items[0], RecordItem("raw", "a", 1, 0.0, odd, chunk=compress_framed(odd))])
    assert direct(m) == 2 and m.value("sbd_record_rolls_total", {"reason": "dtype"}) == 1
    with open_recording(tmp_path / "dt" / "a.nxs") as f:
        assert f["raw/frames"].dtype == np.uint16 and len(f["raw/complete"]) == 1
    with open_recording(tmp_path / "dt" / "a_0001.nxs") as f:
        assert f["raw/frames"].dtype == np.uint8
        np.testing.assert_array_equal(f["raw/frames"][0], odd)
    # gzip datasets: the chunk is ignored, the frame recompressed
    m = _record(tmp_path / "gz", [RecordItem("raw", "a", 0, 0.0, data[0], chunk=good)], "gzip")
    assert direct(m) == 0
    with open_recording(tmp_path / "gz" / "a.nxs") as f:
        np.testing.assert_array_equal(f["raw/frames"][0], data[0])
