"""DECTRIS SIMPLON stream v1 and stream v2 -> the frame / series messages of wire format v1 (pure).

Stream v1 (multipart JSON + binary over PUSH): a series starts with ``dheader-1.0`` followed by the
detector configuration -- in the same multipart message (detectors) or as the next message (the
LiberTEM simulator) -- each image is ``[dimage-1.0, dimage_d-1.0, blob, dconfig-1.0]`` and the series
ends with ``dseries_end-1.0``. Stream v2 is one CBOR map per message (``type`` start / image / end) with
images as CBOR multi-dimensional typed arrays (tags 40 and 64-87), compressed with tag 56500.

Every field is checked (types, shape, dtype, declared sizes) before a byte is decompressed or
allocated, and everything wrong is a ``ProtocolError`` with a short reason the ingest counts. Frames
keep their compressed payload when it is bitshuffle-LZ4 so the recorder may store it unchanged.
See docs/dectris.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sbd_stream.formats.dectris_codec import decompress_framed, decompress_lz4_block
from sbd_stream.frames import own_keys_renamed
from sbd_stream.protocol import (
    DEFAULT_MAX_PAYLOAD,
    DTYPES,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_SEQ,
    MAX_SIDE,
    TOPIC_FRAME,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    FrameMessage,
    Message,
    ProtocolError,
    SeriesHeader,
    SeriesMessage,
    _as_buffer,
    _is_int,
    _is_num,
    nested_deeper,
)

ACQ_PREFIX = "dectris"
MAX_SERIES = 2**63 - 1
_V1_TYPES = {"uint8": 1, "uint16": 2, "uint32": 4}
_V1_ENCODINGS = {"bs8-lz4<": 1, "bs16-lz4<": 2, "bs32-lz4<": 4, "lz4<": 0, "<": 0}
# RFC 8746 typed arrays: tag -> numpy dtype (only what wire format v1 can carry)
_V2_TYPED = {64: "u1", 68: "u1", 65: ">u2", 66: ">u4", 69: "<u2", 70: "<u4", 80: ">f2", 81: ">f4"}
_V2_TYPED |= {84: "<f2", 85: "<f4"}
TAG_MULTI_DIM = 40
TAG_COMPRESSED = 56500
_SEQ = (list, tuple)  # cbor2 >= 6 decodes arrays inside tags as tuples


@dataclass(frozen=True)
class DectrisFrameMessage(FrameMessage):
    """A decoded frame plus, when it came bitshuffle-LZ4 framed, the untouched chunk for the recorder."""

    series: int = 0
    chunk: bytes | None = None


def series_acq(series: int, unique_id: str | None = None) -> str:
    """Acquisition id of a DECTRIS series (unique ids from stream v2 are used when printable)."""
    if unique_id and unique_id.isprintable() and len(unique_id) <= 200:
        return f"{ACQ_PREFIX}-{unique_id}"
    return f"{ACQ_PREFIX}-{series}"


def _short(v: Any, n: int) -> str:
    """``repr`` cut to ``n``; a CBOR bignum past Python's 4300 digits cannot be printed at all (ValueError:
    a traceback per message instead of the counted reason)."""
    try:
        return repr(v)[:n]
    except ValueError:
        return "a number too long to print"


def _no_constant(name: str) -> Any:
    """NaN / Infinity are not JSON, and our own headers refuse them (``allow_nan=False``)."""
    raise ValueError(f"{name} is not JSON")


def _scalar_ok(v: Any) -> bool:
    """A start field kept as metadata. Non-finite numbers are kept too, so that the edge refuses the
    start as ``bad_meta`` as it does a v1 configuration with ``1e400`` (dropping them silently left a
    v2 start with ``count_time = inf`` recorded without its count time)."""
    if isinstance(v, str):
        return len(v) <= 256
    return isinstance(v, int | float)  # bool included


def _json(part: Any, what: str, depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object of at most ``depth`` levels (wire format v1's limit: one rule whatever the stack)."""
    mv = _as_buffer(part)
    if len(mv) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", f"{what}: {len(mv)} bytes")
    try:
        obj = json.loads(bytes(mv).decode("utf-8"), parse_constant=_no_constant)
    except json.JSONDecodeError as exc:  # its message is short and whole (a cut one ended "line 1 co.")
        raise ProtocolError("bad_json", f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ProtocolError("bad_json", f"{what}: {str(exc)[:120]}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"{what} is not an object")
    if nested_deeper(obj, depth):
        raise ProtocolError("bad_json", f"{what}: nested deeper than {depth} levels")
    return obj


CONFIG_DEPTH = MAX_JSON_DEPTH - 2
"""The detector configuration travels in a ``series_start`` header as ``meta.config``, two levels down: a
deeper one made a header the service's subscribers refuse (``protocol.decode``: ``bad_json``)."""


def _series_id(obj: dict[str, Any], key: str = "series") -> int:
    s = obj.get(key)
    if not _is_int(s) or not (0 <= s <= MAX_SERIES):
        raise ProtocolError("bad_series", _short(s, 40))
    return s


def _image_count(n: Any) -> int | None:
    """A series' declared image count as ``n_frames``, or ``None`` past what a frame number can reach.

    It travels on as the start's ``n_frames`` and the end's ``frames_expected``: a CBOR bignum or a JSON
    ``nimages`` of 400 digits (no float holds it) made the edge refuse the ``series_end`` too
    (``bad_meta``), so the part stayed open until ``record.idle_close_s``."""
    return n if _is_int(n) and 0 <= n <= MAX_SEQ else None  # it counts frames, so a frame number's bound


def _shape(h: int, w: int, itemsize: int, max_payload: int) -> tuple[int, int]:
    """``(h, w)`` once each side is 1 to ``MAX_SIDE`` and the frame fits ``max_payload``. The reason
    text goes through ``_short``: a CBOR bignum side (6000 digits) cannot be formatted, and
    ``f"{h}"`` raised ValueError, an uncounted traceback per message (audit h30)."""
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ProtocolError("bad_shape", f"{_short(h, 20)}x{_short(w, 20)}")
    if h * w * itemsize > max_payload:
        raise ProtocolError("too_large", f"{h * w * itemsize} > {max_payload}")
    return h, w


def _finish(raw: np.ndarray, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """Bytes -> little-endian 2-D array in a wire-format dtype, read-only."""
    arr = raw.view(dtype).reshape(shape)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("<"))
    arr.flags.writeable = False
    return arr


def _wire_dtype(dt: np.dtype) -> str:
    for name, d in DTYPES.items():
        if d.kind == dt.kind and d.itemsize == dt.itemsize:
            return name
    raise ProtocolError("bad_dtype", str(dt))


# --- stream v1 -----------------------------------------------------------------------------------


class StreamV1Decoder:
    """Stream v1 is stateful: a single-part ``dheader-1.0`` is completed by the next message."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._pending: dict[str, Any] | None = None  # a dheader waiting for its configuration

    def decode(self, parts: list[Any]) -> list[Message]:
        """Decode one multipart message into zero or one messages (a pending header yields none)."""
        if not parts or len(parts) > 16:
            raise ProtocolError("bad_parts", f"{len(parts)} parts")
        first = _json(parts[0], "part 0")
        htype = first.get("htype")
        if self._pending is not None and htype is None and len(parts) == 1:
            if nested_deeper(first, CONFIG_DEPTH):  # refused as one that does not parse: the header waits on
                raise ProtocolError("bad_json", f"config: nested deeper than {CONFIG_DEPTH} levels")
            header, self._pending = self._pending, None
            return [self._series_start(header, first)]
        if self._pending is not None:  # the configuration never came: start without it
            header, self._pending = self._pending, None
            out: list[Message] = [self._series_start(header, None)]
            return out + self.decode(parts)
        if htype == "dheader-1.0":
            series = _series_id(first)
            detail = first.get("header_detail", "basic")
            if detail not in ("all", "basic", "none"):
                raise ProtocolError("bad_header_detail", _short(detail, 40))
            if len(parts) >= 2:
                return [self._series_start(first, _json(parts[1], "config", CONFIG_DEPTH))]
            if detail == "none":
                return [self._series_start(first, None)]
            self._pending = first | {"series": series}
            return []
        if htype == "dimage-1.0":
            return [self._frame(first, parts)]
        if htype == "dseries_end-1.0":
            series = _series_id(first)
            return [
                SeriesMessage(TOPIC_SERIES_END, SeriesHeader(series_acq(series), 0.0, {"series": series}))
            ]
        raise ProtocolError("bad_htype", _short(htype, 40))

    def flush(self) -> list[SeriesMessage]:
        """A header still waiting (no configuration arrived before the timeout)."""
        if self._pending is None:
            return []
        header, self._pending = self._pending, None
        return [self._series_start(header, None)]

    def _series_start(self, header: dict[str, Any], config: dict[str, Any] | None) -> SeriesMessage:
        series = _series_id(header)
        meta: dict[str, Any] = {"dialect": "dectris-stream-v1", "series": series}
        meta["header_detail"] = header.get("header_detail", "basic")
        n = None
        if config is not None:
            meta["config"] = config
            ni, nt = config.get("nimages", 1), config.get("ntrigger", 1)
            if _is_int(ni) and _is_int(nt) and ni > 0 and nt > 0:
                n = _image_count(ni * nt)
        return SeriesMessage(TOPIC_SERIES_START, SeriesHeader(series_acq(series), 0.0, meta, n))

    def _frame(self, image: dict[str, Any], parts: list[Any]) -> DectrisFrameMessage:
        if len(parts) != 4:
            raise ProtocolError("bad_parts", f"image with {len(parts)} parts")
        series = _series_id(image)
        frame = image.get("frame")
        if not _is_int(frame) or not (0 <= frame <= MAX_SERIES):
            raise ProtocolError("bad_seq", _short(frame, 40))
        d = _json(parts[1], "dimage_d")
        if d.get("htype") != "dimage_d-1.0":
            raise ProtocolError("bad_htype", _short(d.get("htype"), 40))
        shape, ptype, enc = d.get("shape"), d.get("type"), d.get("encoding")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) for s in shape)):
            raise ProtocolError("bad_shape", _short(shape, 40))
        # a JSON array or object is unhashable: ``in`` a dict raised TypeError (internal_error + traceback)
        if not isinstance(ptype, str) or ptype not in _V1_TYPES:
            raise ProtocolError("bad_dtype", _short(ptype, 40))
        if not isinstance(enc, str) or enc not in _V1_ENCODINGS:
            raise ProtocolError("bad_encoding", _short(enc, 40))
        itemsize = _V1_TYPES[ptype]
        hw = _shape(shape[1], shape[0], itemsize, self.max_payload)  # DECTRIS sends [x, y]
        nbytes = hw[0] * hw[1] * itemsize
        cfg = _json(parts[3], "dconfig")
        if cfg.get("htype") != "dconfig-1.0":
            raise ProtocolError("bad_htype", _short(cfg.get("htype"), 40))
        blob = _as_buffer(parts[2])
        size = d.get("size")
        if size is not None and (not _is_int(size) or size != len(blob)):
            raise ProtocolError("bad_length", f"blob {len(blob)} != size {size!r}"[:80])
        chunk = None
        bs = _V1_ENCODINGS[enc]
        if bs:
            if bs != itemsize:
                raise ProtocolError("bad_encoding", f"{enc} for {ptype}")
            raw = decompress_framed(blob, "bslz4", itemsize, nbytes)
            chunk = bytes(blob)
        elif enc == "lz4<":
            raw = decompress_lz4_block(blob, nbytes)
        else:
            if len(blob) != nbytes:
                raise ProtocolError("bad_length", f"payload {len(blob)} != {nbytes}")
            raw = np.frombuffer(blob, np.uint8)
        times = {k: cfg.get(k) for k in ("start_time", "stop_time", "real_time")}
        if not all(_is_num(v) and v >= 0 for v in times.values() if v is not None):
            raise ProtocolError("bad_ts", _short(times, 80))
        meta = {"series": series, "frame": frame, "encoding": enc}
        meta |= {f"{k}_ns": v for k, v in times.items() if v is not None}
        if isinstance(image.get("hash"), str):
            meta["hash"] = image["hash"][:64]
        dtype = np.dtype(f"<u{itemsize}")
        header = FrameHeader(
            acq=series_acq(series),
            seq=frame,
            ts=float(times["start_time"] or 0) * 1e-9,  # detector clock, not wall time
            shape=hw,
            dtype=_wire_dtype(dtype),
            exposure_s=float(times["real_time"] or 0) * 1e-9,
            meta=meta,
        )
        return DectrisFrameMessage(TOPIC_FRAME, header, _finish(raw, dtype, hw), series, chunk)


# --- stream v2 -----------------------------------------------------------------------------------


SELF_DESCRIBED_CBOR = b"\xd9\xd9\xf7"
"""Tag 55799, "self-described CBOR" (RFC 8949 3.4.6): every stream v2 message a DCU sends starts with
it. cbor2 returns a tagged map as a read-only ``frozendict`` (nested maps too), which is no ``dict``:
every real message was refused as ``bad_cbor``. The tag means nothing else, so it is stripped."""


def _cbor(part: Any, max_bytes: int) -> dict[str, Any]:
    import cbor2

    mv = _as_buffer(part)
    if len(mv) > max_bytes:
        raise ProtocolError("too_large", f"{len(mv)} > {max_bytes}")
    if bytes(mv[:3]) == SELF_DESCRIBED_CBOR:
        mv = mv[3:]
    try:
        obj = cbor2.loads(mv)  # unknown tags stay CBORTag objects; nothing is decompressed here
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ProtocolError("bad_cbor", str(exc)[:80]) from exc
    if not isinstance(obj, dict):
        raise ProtocolError("bad_cbor", "message is not a map")
    return obj


def _rational_s(v: Any, reason: str) -> float | None:
    """Stream v2 times are [numerator, denominator] in seconds: absent is ``None``; one that is not two
    integers, is negative, has a zero denominator or is too large for a float is ``reason``.

    CBOR integers have any size, and ``10**400 / 1`` raised ``OverflowError``: an internal error with a
    traceback per message instead of a counted, once-logged bad field. A malformed time (``[-5, 1000]``,
    ``[1, 0]``, ``"x"``) was taken as absent until session 28: the frame went on with ``ts`` 0 and
    ``exposure_s`` 0, uncounted, where docs/dectris.md (and v1) refuse it."""
    if v is None:
        return None
    if not (isinstance(v, _SEQ) and len(v) == 2 and all(_is_int(x) for x in v)):
        raise ProtocolError(reason, f"not [numerator, denominator] integers: {_short(v, 40)}")
    if v[1] <= 0 or v[0] < 0:
        raise ProtocolError(reason, f"negative or a zero denominator: {_short(v, 40)}")
    try:
        return v[0] / v[1]
    except OverflowError:
        raise ProtocolError(reason, "a number too large for a float") from None


def _v2_image(tag: Any, max_payload: int) -> tuple[np.ndarray, bytes | None]:
    """Tag 40 [[h, w], typed array] -> (2-D little-endian array, bslz4 chunk or None)."""
    import cbor2

    if not (isinstance(tag, cbor2.CBORTag) and tag.tag == TAG_MULTI_DIM):
        raise ProtocolError("bad_array", "image is not a tag-40 multi-dimensional array")
    val = tag.value
    if not (isinstance(val, _SEQ) and len(val) == 2 and isinstance(val[0], _SEQ) and len(val[0]) == 2):
        raise ProtocolError("bad_array", "tag 40 needs [[h, w], typed array]")
    dims, typed = val
    if not all(_is_int(s) for s in dims):
        raise ProtocolError("bad_shape", _short(dims, 40))
    if not (isinstance(typed, cbor2.CBORTag) and typed.tag in _V2_TYPED):
        raise ProtocolError("bad_dtype", f"typed-array tag {getattr(typed, 'tag', None)!r}")
    dtype = np.dtype(_V2_TYPED[typed.tag])
    hw = _shape(dims[0], dims[1], dtype.itemsize, max_payload)
    nbytes = hw[0] * hw[1] * dtype.itemsize
    content, chunk = typed.value, None
    if isinstance(content, cbor2.CBORTag) and content.tag == TAG_COMPRESSED:
        c = content.value
        if not (isinstance(c, _SEQ) and len(c) == 3 and isinstance(c[0], str) and _is_int(c[1])):
            raise ProtocolError("bad_compression", "tag 56500 needs [algorithm, modifier, bytes]")
        algo, elem, data = c
        if not isinstance(data, bytes):
            raise ProtocolError("bad_compression", "compressed data is not a byte string")
        if algo == "bslz4":
            if elem != dtype.itemsize:
                raise ProtocolError("bad_compression", f"element size {_short(elem, 20)} for {dtype}")
            raw = decompress_framed(data, "bslz4", elem, nbytes)
            chunk = data if dtype.byteorder != ">" else None
        elif algo == "lz4":
            raw = decompress_framed(data, "lz4", 1, nbytes)
        else:
            raise ProtocolError("bad_compression", _short(algo, 40))
    elif isinstance(content, bytes):
        if len(content) != nbytes:
            raise ProtocolError("bad_length", f"payload {len(content)} != {nbytes}")
        raw = np.frombuffer(content, np.uint8)
    else:
        raise ProtocolError("bad_array", "typed array content is not bytes")
    _wire_dtype(dtype)
    return _finish(raw, dtype, hw), chunk


def decode_stream_v2(parts: list[Any], max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[Message]:
    """Decode one stream v2 message (one part, a CBOR map)."""
    if len(parts) != 1:
        raise ProtocolError("bad_parts", f"{len(parts)} parts")
    obj = _cbor(parts[0], 2 * max_payload + (1 << 20))
    kind = obj.get("type")
    series = _series_id(obj, "series_id")
    uid = obj.get("series_unique_id")
    uid = uid if isinstance(uid, str) else None
    acq = series_acq(series, uid)
    if kind == "start":
        meta: dict[str, Any] = {"dialect": "dectris-stream-v2", "series": series, "series_unique_id": uid}
        for k, v in list(obj.items())[:256]:  # scalars only: masks and flatfields stay out of headers
            if isinstance(k, str) and len(k) <= 64 and k not in meta:
                if _scalar_ok(v):
                    meta[k] = v
                elif isinstance(v, _SEQ) and len(v) <= 64 and all(_scalar_ok(x) for x in v):
                    meta[k] = list(v)
        meta = own_keys_renamed(meta) or meta  # a field named like the service's own (``replay_of``...)
        n = _image_count(obj.get("number_of_images"))
        return [SeriesMessage(TOPIC_SERIES_START, SeriesHeader(acq, 0.0, meta, n))]
    if kind == "end":
        return [SeriesMessage(TOPIC_SERIES_END, SeriesHeader(acq, 0.0, {"series": series}))]
    if kind != "image":
        raise ProtocolError("bad_type", _short(kind, 40))
    image_id = obj.get("image_id")
    if not _is_int(image_id) or not (0 <= image_id <= MAX_SERIES):
        raise ProtocolError("bad_seq", _short(image_id, 40))
    data = obj.get("data")
    if not isinstance(data, dict) or not data:
        raise ProtocolError("bad_array", "image without data")
    channel = sorted(k for k in data if isinstance(k, str))[:1]
    if not channel:
        raise ProtocolError("bad_array", "no named channel")
    arr, chunk = _v2_image(data[channel[0]], max_payload)
    start, real = (
        _rational_s(obj.get("start_time"), "bad_ts"),
        _rational_s(obj.get("real_time"), "bad_exposure"),
    )
    meta = {"series": series, "frame": image_id, "channel": channel[0]}
    if start is not None:
        meta["start_time_s"] = start
    header = FrameHeader(
        acq=acq,
        seq=image_id,
        ts=start or 0.0,
        shape=(int(arr.shape[0]), int(arr.shape[1])),
        dtype=_wire_dtype(arr.dtype),
        exposure_s=real or 0.0,
        meta=meta,
    )
    return [DectrisFrameMessage(TOPIC_FRAME, header, arr, series, chunk)]
