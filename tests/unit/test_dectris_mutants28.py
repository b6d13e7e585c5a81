"""DECTRIS rules that docs/dectris.md states and no other test pinned (mutation round h28).

Decoding (the malformed reason a client's dashboard counts, the series ids a detector may send, the
channel a multi-channel image is read from) and the series state machine, whose receiver plug-in is fed
parts directly as in tests/integration/test_dectris_ingest.py (it has no socket; the messages come from
the format builders in ``sources/dectris/sim.py``).
"""

from __future__ import annotations

import contextlib
import io
import struct
import time

import cbor2
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest

from sbd_stream.config import DectrisInput
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD, ProtocolError, SeriesMessage
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.messages import DectrisFrameMessage, StreamV1Decoder, decode_stream_v2
from sbd_stream.sources.dectris.sim import v1_end, v1_frame, v1_header, v1_series
from sbd_stream.sources.dialect import Emitter

H, W = 37, 53


def frame(dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, (H, W)).astype(dtype)


def bslz4(arr: np.ndarray) -> bytes:
    """The HDF5 bitshuffle-LZ4 filter's chunk for the whole frame (what a detector sends)."""
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=arr[None], chunks=(1, *arr.shape), **hdf5plugin.Bitshuffle())
        return bytes(ds.id.read_direct_chunk((0, 0, 0))[1])


def v1_image(arr: np.ndarray, enc: str, blob: bytes, series: int = 5, size: int | None = None) -> list[bytes]:
    size = len(blob) if size is None else size
    return [
        b'{"htype":"dimage-1.0","series":%d,"frame":0}' % series,
        b'{"htype":"dimage_d-1.0","shape":[%d,%d],"type":"%s","encoding":"%s","size":%d}'
        % (W, H, arr.dtype.name.encode(), enc.encode(), size),
        blob,
        b'{"htype":"dconfig-1.0","start_time":0,"stop_time":25000000,"real_time":25000000}',
    ]


def reason(parts: list[bytes]) -> str:
    with pytest.raises(ProtocolError) as e:
        StreamV1Decoder().decode(parts)
    return e.value.reason


def test_a_blob_declaring_fewer_bytes_than_the_header_implies_is_bad_blob() -> None:
    """docs/dectris.md: the declared size must *equal* what the header implies (``bad_blob``, checked
    before decompressing); a smaller one reached the decompressor and was counted as decompress_failed."""
    arr = frame()
    blob = bytearray(bslz4(arr))
    blob[:8] = struct.pack(">Q", arr.nbytes - 512)
    assert reason(v1_image(arr, "bs16-lz4<", bytes(blob))) == "bad_blob"


def test_a_block_size_that_is_no_multiple_of_the_element_size_is_bad_blob() -> None:
    """A bad block size is ``bad_blob``, checked before decompressing (docs/dectris.md's table)."""
    arr = frame()
    blob = bytearray(bslz4(arr))
    blob[8:12] = struct.pack(">I", 8191)  # odd bytes for 2-byte pixels
    assert reason(v1_image(arr, "bs16-lz4<", bytes(blob))) == "bad_blob"


def test_an_lz4_block_that_decodes_to_fewer_bytes_is_decompress_failed() -> None:
    """An ``lz4<`` block of a smaller frame decodes without an LZ4 error; its size is checked, so it is
    a counted ``decompress_failed``, not a reshape error deeper in (an ``internal_error``)."""
    arr = frame()
    short = lz4.block.compress(arr[: H - 3].tobytes(), store_size=False)
    assert reason(v1_image(arr, "lz4<", short)) == "decompress_failed"


def test_a_size_that_is_not_the_blobs_length_is_bad_length() -> None:
    """``size`` must equal the blob length (``bad_length``), also for a blob that decodes fine."""
    arr = frame()
    blob = bslz4(arr)
    assert reason(v1_image(arr, "bs16-lz4<", blob, size=len(blob) + 1)) == "bad_length"
    (ok,) = StreamV1Decoder().decode(v1_image(arr, "bs16-lz4<", blob))  # the same with the right size
    np.testing.assert_array_equal(ok.data, arr)


def test_series_zero_is_a_series_in_both_dialects() -> None:
    """``series`` / ``series_id`` is any non-negative integer (docs: ``bad_series`` otherwise): 0 included."""
    dec = StreamV1Decoder()
    (start,) = dec.decode([b'{"htype":"dheader-1.0","series":0,"header_detail":"none"}'])
    assert start.header.acq == "dectris-0"
    arr = frame()
    (msg,) = dec.decode(v1_image(arr, "<", arr.tobytes(), series=0))
    assert msg.header.acq == "dectris-0" and msg.header.meta["series"] == 0
    (s2,) = decode_stream_v2([cbor2.dumps({"type": "start", "series_id": 0, "number_of_images": 1})])
    assert s2.header.acq == "dectris-0" and s2.header.n_frames == 1


def test_a_dheader_without_header_detail_waits_for_its_configuration() -> None:
    """``header_detail`` defaults to ``basic``: a single-part dheader without it waits for the detector
    configuration (the next message), whose image count becomes the series' ``n_frames``."""
    dec = StreamV1Decoder()
    assert dec.decode([b'{"htype":"dheader-1.0","series":3}']) == []
    (start,) = dec.decode([b'{"nimages":2,"ntrigger":5}'])
    assert isinstance(start, SeriesMessage) and start.header.n_frames == 10
    assert start.header.meta["config"] == {"nimages": 2, "ntrigger": 5}


def test_a_multi_channel_v2_image_is_read_from_the_first_channel_by_name() -> None:
    """docs/dectris.md: images under ``data.<channel>``, *the first channel by name*."""
    first, second = frame("uint16", 1), frame("uint16", 2)

    def tagged(a: np.ndarray) -> cbor2.CBORTag:
        return cbor2.CBORTag(40, [[H, W], cbor2.CBORTag(69, a.astype("<u2").tobytes())])

    image = {
        "type": "image",
        "series_id": 1,
        "image_id": 0,
        "data": {"threshold_2": tagged(second), "threshold_1": tagged(first)},
    }
    (msg,) = decode_stream_v2([cbor2.dumps(image)])
    assert isinstance(msg, DectrisFrameMessage) and msg.header.meta["channel"] == "threshold_1"
    np.testing.assert_array_equal(msg.data, first)


def test_a_v2_time_with_a_zero_denominator_never_raises_past_the_decoder() -> None:
    """Stream v2 times are ``[numerator, denominator]``; a zero denominator from a peer must not become a
    ZeroDivisionError (an ``internal_error`` with a traceback per message): decoded or refused, no other."""
    image = {
        "type": "image",
        "series_id": 1,
        "image_id": 0,
        "start_time": [1, 0],
        "real_time": [25, 0],
        "data": {"t": cbor2.CBORTag(40, [[1, 2], cbor2.CBORTag(64, b"ab")])},
    }
    with contextlib.suppress(ProtocolError):
        decode_stream_v2([cbor2.dumps(image)])


# --- the series state machine ----------------------------------------------------------------------

SHAPE = (24, 40)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.poisson(0.45, SHAPE).astype(np.uint16) for _ in range(n)]


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.series: list[SeriesMessage] = []

    def events(self) -> list[tuple[str, str, object]]:
        return [(s.topic.decode(), s.header.acq, s.header.meta.get("end_reason")) for s in self.series]


def make(timeout_s: float = 5.0) -> tuple[DectrisDialect, Sink]:
    sink = Sink()
    inp = DectrisInput.model_validate({"dialect": "dectris-stream-v1", "series_timeout_s": timeout_s})
    emit = Emitter(Metrics(), sink.frames.append, sink.series.append)
    return DectrisDialect(inp, DEFAULT_MAX_PAYLOAD, emit), sink


def val(ing: DectrisDialect, name: str) -> float:
    return ing.metrics.value(name)


def test_the_end_of_another_series_is_stale_and_leaves_the_open_one_open() -> None:
    """docs/dectris.md: "An end for a series that is not the open one is stale": it must not close the
    open series (whose later frames would then look like a joined series and its end come twice)."""
    ing, sink = make()
    data = frames(4)
    ing.handle(v1_header(1, None, "none"))
    ing.handle(v1_frame(data[0], 1, 0))
    ing.handle(v1_end(77))  # a series we never saw
    assert sink.events() == [("series_start", "dectris-1", None)]
    assert val(ing, "sbd_dectris_stale_messages_total") == 1
    for i in range(1, 4):
        ing.handle(v1_frame(data[i], 1, i))
    ing.handle(v1_end(1))
    assert sink.events() == [("series_start", "dectris-1", None), ("series_end", "dectris-1", "series_end")]
    assert sink.series[-1].header.n_frames == 4 and val(ing, "sbd_dectris_series_joined_total") == 0


def test_a_frame_of_another_series_after_a_timeout_joins_it_and_does_not_resume_the_paused_one() -> None:
    """Only the series the timeout closed is resumed by *its* next frame; a frame of another series
    with nothing open is a join (``meta.joined``), and the timed-out series is not reopened and closed
    again (a second ``series_end`` for it, counted as resumed and superseded)."""
    ing, sink = make()
    data = frames(3)
    ing.handle(v1_header(5, None, "none"))
    ing.handle(v1_frame(data[0], 5, 0))
    assert ing.check_timeout(time.monotonic() + 60.0)
    ing.handle(v1_frame(data[1], 6, 4))  # series 6, whose start we never saw
    assert sink.events() == [
        ("series_start", "dectris-5", None),
        ("series_end", "dectris-5", "timeout"),
        ("series_start", "dectris-6", None),
    ]
    assert sink.series[-1].header.meta.get("joined") is True
    assert val(ing, "sbd_dectris_series_resumed_total") == 0
    assert val(ing, "sbd_dectris_series_superseded_total") == 0
    assert val(ing, "sbd_dectris_series_joined_total") == 1
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [("dectris-5", 0), ("dectris-6", 4)]


def test_the_series_end_counts_frames_received_not_duplicates() -> None:
    """``series_end`` carries ``n_frames`` *received* (docs/dectris.md): a repeated frame is counted as a
    duplicate and dropped, not received twice."""
    ing, sink = make()
    data = frames(3)
    msgs = v1_series(data, 12)
    for m in msgs[:3]:
        ing.handle(m)
    ing.handle(msgs[2])  # frame 1 again
    for m in msgs[3:]:
        ing.handle(m)
    assert [f.header.seq for f in sink.frames] == [0, 1, 2]
    end = sink.series[-1]
    assert end.header.n_frames == 3 and end.header.meta["frames_received"] == 3
    assert end.header.meta["frames_expected"] == 3


def test_detector_chunks_reach_the_pipeline_with_their_frames() -> None:
    """docs/dectris.md "Recording without recompressing": a bitshuffle-LZ4 frame reaches the pipeline
    with its ``chunk`` (the bytes sent), an uncompressed one without."""
    ing, sink = make()
    data = frames(2)
    ing.handle(v1_header(3, None, "none"))
    bs = v1_frame(data[0], 3, 0, "bslz4")
    ing.handle(bs)
    ing.handle(v1_frame(data[1], 3, 1, "raw"))
    assert sink.frames[0].chunk == bs[2] and sink.frames[1].chunk is None
    assert [f.series for f in sink.frames] == [3, 3]


def test_a_restarted_numbering_is_flagged_on_the_frame() -> None:
    """A sender that restarts its numbering inside a series (the sequence tracker's ``restart``) marks
    that frame ``seq_restart``, so the recorder starts a new run instead of mixing the two."""
    ing, sink = make()
    data = frames(8)
    ing.handle(v1_header(4, None, "none"))
    for i in range(8):
        ing.handle(v1_frame(data[i], 4, i))
    ing.handle(v1_frame(data[0], 4, 0))  # numbering back to 0
    assert val(ing, "sbd_sequence_restarts_total") >= 1
    assert sink.frames[-1].header.seq == 0 and sink.frames[-1].seq_restart
    assert not any(f.seq_restart for f in sink.frames[:-1])


def test_a_header_whose_configuration_never_came_is_started_on_the_timeout() -> None:
    """A single-part ``dheader`` waits for its configuration; when the inactivity timeout passes without
    it, the series is started without it (``StreamV1Decoder.flush``), not left pending until some later
    message happens to arrive."""
    ing, sink = make(timeout_s=2.0)
    ing.handle(v1_header(21, None))  # "basic", no configuration part
    assert sink.series == []
    ing.check_timeout(time.monotonic() + 60.0)
    starts = [s for s in sink.series if s.topic == b"series_start"]
    assert [s.header.acq for s in starts] == ["dectris-21"]
    assert "config" not in starts[0].header.meta and starts[0].header.meta["series"] == 21
