"""Golden DECTRIS stream v1 / v2 messages, written out here from the published formats, and fuzzing.

The messages are spelled out literally (JSON text, CBOR tags) rather than built with
sbd_stream.sources.dectris.sim, so a misreading of the format shared by encoder and decoder can't pass.
Compressed payloads come from the HDF5 bitshuffle / LZ4 filters (hdf5plugin) and lz4.block.
"""

from __future__ import annotations

import io
import struct

import cbor2
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbd_stream.config import DectrisInput
from sbd_stream.formats import dectris_codec as codec
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import ProtocolError, SeriesMessage
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.messages import DectrisFrameMessage, StreamV1Decoder, decode_stream_v2
from sbd_stream.sources.dectris.sim import v1_series, v2_end, v2_image, v2_start
from sbd_stream.sources.dialect import Emitter

H, W = 37, 53  # not square: a swapped [x, y] would show


def h5_chunk(arr: np.ndarray, filt: dict) -> bytes:
    """What the HDF5 filter writes for one whole-array chunk (the bytes a DECTRIS detector sends)."""
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=arr[None], chunks=(1, *arr.shape), **filt)
        return bytes(ds.id.read_direct_chunk((0, 0, 0))[1])


def frame(dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, (H, W)).astype(dtype)


def v1_image(arr: np.ndarray, enc: str, blob: bytes, series: int = 5, idx: int = 0) -> list[bytes]:
    return [
        b'{"htype":"dimage-1.0","series":%d,"frame":%d,"hash":"abc"}' % (series, idx),
        b'{"htype":"dimage_d-1.0","shape":[%d,%d],"type":"%s","encoding":"%s","size":%d}'
        % (W, H, arr.dtype.name.encode(), enc.encode(), len(blob)),
        blob,
        b'{"htype":"dconfig-1.0","start_time":1000000,"stop_time":26000000,"real_time":25000000}',
    ]


@pytest.mark.parametrize(
    ("dtype", "enc"),
    [
        ("uint8", "bs8-lz4<"),
        ("uint16", "bs16-lz4<"),
        ("uint32", "bs32-lz4<"),
        ("uint16", "lz4<"),
        ("uint32", "<"),
    ],
)
def test_v1_golden_series(dtype: str, enc: str) -> None:
    arr = frame(dtype)
    if enc.startswith("bs"):
        blob = h5_chunk(arr, hdf5plugin.Bitshuffle(cname="lz4"))
    elif enc == "lz4<":
        blob = lz4.block.compress(arr.tobytes(), store_size=False)
    else:
        blob = arr.tobytes()
    dec = StreamV1Decoder()
    start = dec.decode(
        [
            b'{"htype":"dheader-1.0","series":5,"header_detail":"basic"}',
            b'{"nimages":1,"ntrigger":3,"trigger_mode":"exte","x_pixels_in_detector":%d}' % W,
        ]
    )
    assert isinstance(start[0], SeriesMessage) and start[0].topic == b"series_start"
    assert start[0].header.acq == "dectris-5" and start[0].header.n_frames == 3
    assert start[0].header.meta["config"]["x_pixels_in_detector"] == W
    (msg,) = dec.decode(v1_image(arr, enc, blob))
    assert isinstance(msg, DectrisFrameMessage)
    assert msg.data.shape == (H, W) and msg.data.dtype == arr.dtype and not msg.data.flags.writeable
    np.testing.assert_array_equal(msg.data, arr)
    h = msg.header
    assert (h.acq, h.seq, h.dtype) == ("dectris-5", 0, dtype)
    assert h.exposure_s == pytest.approx(0.025) and h.ts == pytest.approx(0.001)
    assert h.meta["hash"] == "abc" and h.meta["encoding"] == enc
    assert (msg.chunk == blob) if enc.startswith("bs") else msg.chunk is None
    (end,) = dec.decode([b'{"htype":"dseries_end-1.0","series":5}'])
    assert end.topic == b"series_end" and end.header.acq == "dectris-5"


def test_v1_header_then_config_as_separate_messages() -> None:
    """The LiberTEM simulator sends dheader and the configuration as two single-part messages."""
    dec = StreamV1Decoder()
    assert dec.decode([b'{"htype":"dheader-1.0","series":9,"header_detail":"basic"}']) == []
    (start,) = dec.decode([b'{"nimages":4,"ntrigger":1,"trigger_mode":"ints"}'])
    assert start.header.n_frames == 4 and start.header.meta["config"]["trigger_mode"] == "ints"
    # a header whose configuration never comes is completed by the next image
    assert dec.decode([b'{"htype":"dheader-1.0","series":10,"header_detail":"basic"}']) == []
    arr = frame()
    out = dec.decode(v1_image(arr, "bs16-lz4<", h5_chunk(arr, hdf5plugin.Bitshuffle()), series=10))
    assert [type(m).__name__ for m in out] == ["SeriesMessage", "DectrisFrameMessage"]


@pytest.mark.parametrize("compression", ["bslz4", "lz4", None])
@pytest.mark.parametrize(("dtype", "tag"), [("<u2", 69), (">u2", 65), ("u1", 64), ("<u4", 70), ("<f4", 85)])
def test_v2_golden_series(compression: str | None, dtype: str, tag: int) -> None:
    arr = frame("uint16").astype(dtype)
    if compression == "bslz4":
        content = cbor2.CBORTag(56500, ["bslz4", arr.dtype.itemsize, h5_chunk(arr, hdf5plugin.Bitshuffle())])
    elif compression == "lz4":
        content = cbor2.CBORTag(56500, ["lz4", 0, h5_chunk(arr.view(np.uint8), hdf5plugin.LZ4())])
    else:
        content = arr.tobytes()
    start = cbor2.dumps(
        {
            "type": "start",
            "series_id": 7,
            "series_unique_id": "abc-7",
            "number_of_images": 2,
            "count_time": 0.025,
        }
    )
    image = cbor2.dumps(
        {
            "type": "image",
            "series_id": 7,
            "series_unique_id": "abc-7",
            "image_id": 1,
            "start_time": [50, 1000],
            "real_time": [25, 1000],
            "data": {"threshold_1": cbor2.CBORTag(40, [[H, W], cbor2.CBORTag(tag, content)])},
        }
    )
    (s,) = decode_stream_v2([start])
    assert s.header.acq == "dectris-abc-7" and s.header.n_frames == 2 and s.header.meta["count_time"] == 0.025
    (m,) = decode_stream_v2([image])
    assert m.data.dtype.byteorder in ("<", "|", "=") and m.data.shape == (H, W)
    np.testing.assert_array_equal(m.data, arr)
    assert (m.header.seq, m.header.ts, m.header.exposure_s) == (1, 0.05, 0.025)
    assert (m.chunk is not None) == (compression == "bslz4" and dtype != ">u2")
    (e,) = decode_stream_v2([cbor2.dumps({"type": "end", "series_id": 7, "series_unique_id": "abc-7"})])
    assert e.topic == b"series_end"


def test_declared_size_checked_before_decompressing() -> None:
    arr = frame()
    blob = bytearray(h5_chunk(arr, hdf5plugin.Bitshuffle()))
    blob[:8] = struct.pack(">Q", 2**62)  # a hostile uncompressed size
    with pytest.raises(ProtocolError) as e:
        StreamV1Decoder().decode(v1_image(arr, "bs16-lz4<", bytes(blob)))
    assert e.value.reason == "bad_blob"
    big = [
        b'{"htype":"dimage-1.0","series":1,"frame":0}',
        b'{"htype":"dimage_d-1.0","shape":[16384,16384],"type":"uint32","encoding":"bs32-lz4<"}',
        b"x",
        b'{"htype":"dconfig-1.0"}',
    ]
    with pytest.raises(ProtocolError) as e:
        StreamV1Decoder().decode(big)
    assert e.value.reason == "too_large"
    with pytest.raises(ProtocolError) as e:  # encoding element size must match the pixel type
        StreamV1Decoder().decode(v1_image(arr, "bs32-lz4<", h5_chunk(arr, hdf5plugin.Bitshuffle())))
    assert e.value.reason == "bad_encoding"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("type", '["uint16"]', "bad_dtype"),
        ("type", '{"a":1}', "bad_dtype"),
        ("encoding", '["lz4<"]', "bad_encoding"),
        ("encoding", "{}", "bad_encoding"),
    ],
)
def test_v1_type_or_encoding_as_array_or_object_is_counted_not_an_internal_error(
    key: str, value: str, reason: str
) -> None:
    """A JSON array or object is unhashable: looking it up among the known types raised TypeError, which
    the receiver counted as ``internal_error`` with a traceback in the log for every such message."""
    arr = frame()
    parts = v1_image(arr, "<", arr.tobytes())
    field = b'"type":"uint16"' if key == "type" else b'"encoding":"<"'
    parts[1] = parts[1].replace(field, b'"%s":%s' % (key.encode(), value.encode()))
    with pytest.raises(ProtocolError) as e:
        StreamV1Decoder().decode(parts)
    assert e.value.reason == reason
    ing = _ingest("dectris-stream-v1")  # the plug-in counts it under that reason (nothing raises)
    for m in v1_series([arr], 5)[:1]:
        ing.handle(list(m))
    ing.handle(parts)
    assert ing.metrics.registry.get_sample_value("sbd_frames_malformed_total", {"reason": reason}) == 1


@pytest.mark.skipif(len(codec.backends()) < 2, reason="dectris-compression is not installed")
def test_codec_backends_agree() -> None:
    """DECTRIS's own decompressor and the hdf5plugin filters decode the same bytes identically."""
    for dtype in ("uint8", "uint16", "uint32"):
        arr = frame(dtype, seed=3)
        for algo, filt, esz in (
            ("bslz4", hdf5plugin.Bitshuffle(), arr.itemsize),
            ("lz4", hdf5plugin.LZ4(), 1),
        ):
            chunk = h5_chunk(arr if algo == "bslz4" else arr.view(np.uint8), filt)
            outs = [
                codec.decompress_framed(chunk, algo, esz, arr.nbytes, b) for b in ("dectris", "hdf5plugin")
            ]
            np.testing.assert_array_equal(outs[0], outs[1])
            np.testing.assert_array_equal(outs[0].view(arr.dtype).reshape(arr.shape), arr)


# --- fuzzing: malformed input is counted, never fatal --------------------------------------------------


def _ingest(dialect: str) -> DectrisDialect:
    """The plug-in itself, without the receiver's guard: anything but a ProtocolError fails the test."""
    frames: list = []
    ing = DectrisDialect(DectrisInput(dialect=dialect), 1 << 20, Emitter(Metrics(), frames.append))
    ing.frames = frames  # type: ignore[attr-defined]
    return ing


_V1_VALID = v1_series([frame("uint16", 1), frame("uint16", 2)], 3)
_V2_VALID = [
    v2_start(4, "u", (H, W), "uint16", 1),
    v2_image(frame("uint16", 1), 4, "u", 0, "bslz4"),
    v2_image(frame("uint16", 1), 4, "u", 1, "lz4"),
    v2_end(4, "u"),
]


def _mutate(data: st.DataObject, msg: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    b = bytearray(msg)
    if kind == "flip" and b:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b)))]
    else:
        i = data.draw(st.integers(0, len(b)))
        b[i:i] = data.draw(st.binary(max_size=32))
    return bytes(b)


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(data=st.data())
def test_fuzz_v1_counted_never_fatal(data: st.DataObject) -> None:
    ing = _ingest("dectris-stream-v1")
    msgs = [list(m) for m in _V1_VALID]
    target = data.draw(st.integers(0, len(msgs) - 1))
    p = data.draw(st.integers(0, len(msgs[target]) - 1))
    msgs[target][p] = _mutate(data, msgs[target][p])
    if data.draw(st.booleans()):
        msgs.insert(
            data.draw(st.integers(0, len(msgs))), data.draw(st.lists(st.binary(max_size=64), max_size=5))
        )
    for m in msgs:
        ing.handle(m)
    bad = ing.metrics.registry.get_sample_value
    malformed = sum(
        s.value for s in ing.metrics.frames_malformed.collect()[0].samples if s.name.endswith("_total")
    )
    # every frame either arrived intact or was counted somewhere
    assert len(ing.frames) + malformed + (bad("sbd_dectris_stale_messages_total") or 0) >= 1
    for f in ing.frames:
        assert f.data.shape == (H, W)


@_FUZZ
@given(data=st.data())
def test_fuzz_v2_counted_never_fatal(data: st.DataObject) -> None:
    ing = _ingest("dectris-stream-v2")
    msgs = list(_V2_VALID)
    i = data.draw(st.integers(0, len(msgs) - 1))
    msgs[i] = _mutate(data, msgs[i])
    extra = data.draw(st.lists(st.binary(max_size=64), max_size=3))
    for m in msgs:
        ing.handle([m])
    for e in extra:
        ing.handle([e])
    ing.handle([])  # no parts at all
    ing.handle([b"a", b"b"])
    malformed = sum(
        s.value for s in ing.metrics.frames_malformed.collect()[0].samples if s.name.endswith("_total")
    )
    assert malformed >= 2
    for f in ing.frames:
        assert f.data.shape == (H, W)


def test_direct_chunk_append_reads_back_like_a_recompressed_frame(tmp_path) -> None:
    """The detector's bslz4 chunk stored with write_direct_chunk is a valid bitshuffle-LZ4 HDF5 frame."""
    arrs = [frame("uint16", s) for s in range(3)]
    msgs = StreamV1Decoder().decode(v1_series(arrs, 2)[1])  # one image message
    with h5py.File(tmp_path / "r.h5", "w", libver="latest") as f:
        ds = f.create_dataset(
            "frames",
            shape=(0, H, W),
            maxshape=(None, H, W),
            chunks=(1, H, W),
            dtype="<u2",
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
        for m in [msgs[0], *[StreamV1Decoder().decode(v1_series([a], 2)[1])[0] for a in arrs[1:]]]:
            codec.append_chunk(ds, m.chunk)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        np.testing.assert_array_equal(f["frames"][:], np.stack(arrs))


def test_v2_messages_with_the_self_described_cbor_tag_decode_as_without() -> None:
    """Every stream v2 message a DCU sends starts with tag 55799 (``d9 d9 f7``); cbor2 returns such a map
    as a ``frozendict``, and every real message was refused as ``bad_cbor`` (audit, against DECTRIS's
    published captures). The builders now send it, as a DCU does; both forms decode alike."""
    from sbd_stream.sources.dectris.messages import SELF_DESCRIBED_CBOR

    arr = frame("uint16")
    msgs = [v2_start(7, "abc-7", (H, W), "uint16", 1), v2_image(arr, 7, "abc-7", 0), v2_end(7, "abc-7")]
    assert all(m.startswith(SELF_DESCRIBED_CBOR) for m in msgs)
    for m in msgs:
        tagged, plain = decode_stream_v2([m]), decode_stream_v2([m[len(SELF_DESCRIBED_CBOR) :]])
        assert [(x.topic, x.header) for x in tagged] == [(x.topic, x.header) for x in plain]
    (image,) = decode_stream_v2([msgs[1]])
    np.testing.assert_array_equal(image.data, arr)
    assert decode_stream_v2([msgs[0]])[0].header.meta["channels"] == ["threshold_1"]
