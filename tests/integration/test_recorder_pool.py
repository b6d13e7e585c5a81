"""The recorder's compressor pool (``record.compress_threads``): raw frames compressed off the writer
thread are stored with ``write_direct_chunk`` in queue order, in the very file the HDF5 filter writes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the bitshuffle filter, for reading back
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.formats.dectris_codec import compress_framed
from sbd_stream.formats.recording import BSHUF_FILTER_ID, BSHUF_LZ4
from sbd_stream.metrics import Metrics
from sbd_stream.sinks import recorder as recorder_mod
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SHAPE = (61, 47)  # not a multiple of the bitshuffle block: the leftover path is exercised too


def _frame(seq: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(seq)
    big = 300 if dtype == "uint16" else 200  # a few values using the high byte / bit
    return np.where(rng.random(SHAPE) < 0.01, big, rng.poisson(0.45, SHAPE)).astype(dtype)


def _record(directory: Path, dtype: str, threads: int, n: int = 40) -> Metrics:
    m = Metrics()
    s = RecordSettings(directory=directory, min_free_bytes=0, record_llr=False, compress_threads=threads)
    rec = Recorder(s, m)
    rec.start()
    rec.submit(RecordItem("series_start", "acq"))
    for i in range(n):
        assert rec.submit(RecordItem("raw", "acq", i, float(i), _frame(i, dtype)))
        if i % 3 == 0:  # outputs interleaved with the raw frames, as the pipeline sends them
            assert rec.submit(RecordItem("denoised", "acq", i, float(i), _frame(i, dtype).astype(np.float32)))
    rec.submit(RecordItem("series_end", "acq"))
    rec.stop()
    rec.join(30)
    return m


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_pool_frames_read_back_pixel_equal_in_order(tmp_path: Path, dtype: str, monkeypatch) -> None:
    compressed = []

    def spy(array, algo="bslz4"):
        compressed.append(threading.current_thread().name)
        return compress_framed(array, algo)

    monkeypatch.setattr(recorder_mod, "compress_framed", spy)
    m = _record(tmp_path, dtype, threads=3)
    # every raw frame and every denoised frame (0, 3, ..., 39) is compressed on the pool, none here
    assert len(compressed) == 40 + len(range(0, 40, 3))
    assert all(n.startswith("sbd-compress") for n in compressed)
    with h5py.File(tmp_path / "acq.nxs", "r") as f:
        raw = f["raw/frames"]
        assert raw.dtype == np.dtype(dtype) and raw.shape == (40, *SHAPE) and raw.chunks == (1, *SHAPE)
        plist = raw.id.get_create_plist()
        fid, _flags, cd, _name = plist.get_filter(0)
        assert plist.get_nfilters() == 1 and fid == BSHUF_FILTER_ID and cd[4] == BSHUF_LZ4
        for i in range(40):
            np.testing.assert_array_equal(raw[i], _frame(i, dtype))
        np.testing.assert_array_equal(f["raw/seq"][:], np.arange(40))
        np.testing.assert_array_equal(f["raw/complete"][:], np.ones(40))
        np.testing.assert_array_equal(f["denoised/seq"][:], np.arange(0, 40, 3))
        np.testing.assert_array_equal(f["denoised/frames"][2], _frame(6, dtype).astype(np.float32))
    assert m.value("sbd_frames_recorded_total", {"kind": "raw"}) == 40
    assert m.value("sbd_record_dropped_total") == 0
    assert m.value("sbd_record_direct_chunks_total") == 0  # counts detector chunks only


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_pool_writes_the_chunks_the_filter_writes(tmp_path: Path, dtype: str) -> None:
    """Every reader of a filter-written recording reads a pool-written one: the bytes are the same."""
    (tmp_path / "pool").mkdir()
    (tmp_path / "filter").mkdir()
    _record(tmp_path / "pool", dtype, threads=2, n=8)
    _record(tmp_path / "filter", dtype, threads=0, n=8)
    with (
        h5py.File(tmp_path / "pool" / "acq.nxs", "r") as a,
        h5py.File(tmp_path / "filter" / "acq.nxs", "r") as b,
    ):
        assert a["raw/frames"].id.get_create_plist().get_filter(0) == b[
            "raw/frames"
        ].id.get_create_plist().get_filter(0)
        for i in range(8):
            assert a["raw/frames"].id.read_direct_chunk((i, 0, 0)) == b["raw/frames"].id.read_direct_chunk(
                (i, 0, 0)
            )


@pytest.mark.timeout(60)
def test_failed_compression_falls_back_to_the_filter(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(array, algo="bslz4"):
        raise RuntimeError("codec gone")

    monkeypatch.setattr(recorder_mod, "compress_framed", broken)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sinks.recorder"):
        m = _record(tmp_path, "uint16", threads=2, n=5)
    with h5py.File(tmp_path / "acq.nxs", "r") as f:
        for i in range(5):
            np.testing.assert_array_equal(f["raw/frames"][i], _frame(i, "uint16"))
    assert m.value("sbd_frames_recorded_total", {"kind": "raw"}) == 5
    assert "the filter compresses it" in caplog.text


@pytest.mark.timeout(30)
def test_a_recorder_behind_the_detector_drops_visibly(tmp_path: Path, caplog) -> None:
    """Too slow a disk or too few cores: the queue fills, frames are counted as dropped and logged."""
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), m, queue_frames=4)  # not started
    with caplog.at_level(logging.ERROR, logger="sbd_stream.sinks.recorder"):
        accepted = [rec.submit(RecordItem("raw", "acq", i, float(i), _frame(i, "uint8"))) for i in range(10)]
        rec.loss_log.tick(force=True)  # what stopping the recorder does
    assert accepted == [True] * 4 + [False] * 6
    assert m.value("sbd_record_dropped_total") == 6
    # one line, then a sum (it was a line per frame: 40 a second under a 40 Hz overload)
    assert caplog.text.count("recorder queue full (ingest.record_queue_frames = 4):") == 1  # the setting
    assert "frame 4 of acq NOT recorded" in caplog.text
    assert "5 more items NOT recorded (recorder queue full)" in caplog.text


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
@pytest.mark.parametrize("shape", [(61, 47), (5, 3), (64, 64)])
def test_compressors_agree_byte_for_byte(dtype: str, shape: tuple[int, int]) -> None:
    """``bitshuffle`` (the pool's backend) writes the HDF5 filter's own chunk, leftover bytes included."""
    from sbd_stream.formats import dectris_codec as codec

    a = (np.random.default_rng(0).poisson(0.45, shape) * 3).astype(dtype)
    ref = codec.compress_framed(a, backend="hdf5plugin")
    for backend in codec.compress_backends():
        assert codec.compress_framed(a, backend=backend) == ref


def test_denoised_frames_are_stored_in_the_configured_dtype(tmp_path: Path) -> None:
    """float16 by default (a third of float32's compressed bytes; rounding <= 2^-11 relative), float32 on
    request; either way compressed on the pool and read back as what was stored."""
    rng = np.random.default_rng(0)
    den = [rng.uniform(0.2, 1.5, SHAPE).astype(np.float32) for _ in range(3)]
    for dtype in ("float16", "float32"):
        d = tmp_path / dtype
        s = RecordSettings(directory=d, denoised_dtype=dtype, min_free_bytes=0, compress_threads=2)
        rec = Recorder(s, Metrics())
        rec.start()
        rec.submit(RecordItem("series_start", "acq"))
        for q in range(3):
            assert rec.submit(RecordItem("raw", "acq", q, 1.0 + q, _frame(q, "uint16")))
            assert rec.submit(RecordItem("denoised", "acq", q, 1.0 + q, den[q]))
        rec.submit(RecordItem("series_end", "acq"))
        rec.stop()
        rec.join(30)
        with h5py.File(d / "acq.nxs", "r") as f:
            got = f["denoised/frames"]
            assert got.dtype == np.dtype(dtype) and got.shape == (3, *SHAPE)
            for q in range(3):
                np.testing.assert_array_equal(got[q], den[q].astype(dtype))
                np.testing.assert_allclose(got[q], den[q], rtol=2.0**-11)
