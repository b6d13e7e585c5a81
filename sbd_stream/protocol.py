"""Wire format v1: pure encoding and decoding of frame messages (no sockets here).

A message is three ZeroMQ parts: ``[topic, header, payload]``. The header is UTF-8 JSON; the payload
is the raw C-ordered pixel buffer. Series start / end messages carry an empty payload. Everything a
peer sends is checked (sizes, types, limits, payload length) *before* any array is allocated, because
the ingest runs unattended next to a microscope and a bad bridge must never take it down. See
docs/wire-format.md for the language-neutral description.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

VERSION = 1

TOPIC_FRAME = b"frame"
TOPIC_DENOISED = b"denoised"
TOPIC_LLR = b"llr"
TOPIC_SERIES_START = b"series_start"
TOPIC_SERIES_END = b"series_end"

FRAME_TOPICS = frozenset({TOPIC_FRAME, TOPIC_DENOISED, TOPIC_LLR})
SERIES_TOPICS = frozenset({TOPIC_SERIES_START, TOPIC_SERIES_END})
ALL_TOPICS = FRAME_TOPICS | SERIES_TOPICS

MAX_HEADER_BYTES = 64 * 1024
MAX_SIDE = 16384
DEFAULT_MAX_PAYLOAD = 3838 * 3710 * 4
MAX_ACQ_LEN = 256
MAX_SEQ = 2**63 - 1
MAX_JSON_DEPTH = 64
"""Most levels of objects / arrays in a JSON header (the header object is level 1): deeper is ``bad_json``.
Python's parser recurses, so without a limit the deepest accepted header depended on the stack in use (~985
levels in the reference decoder, fewer on the service's receive thread): one rule, whoever decodes."""
TS_MIN = -62135596800.0  # 0001-01-01T00:00:00Z
TS_MAX = 253402300799.0  # 9999-12-31T23:59:59Z
"""``ts`` names a date (Unix seconds, UTC) in years 1 to 9999, the dates a recording can state.

A number outside (``1e308``, nanoseconds sent as seconds) is refused as ``bad_ts`` at the edge:
the recorder turns the first frame's ``ts`` into the ISO 8601 start of its acquisition, and the
time axis into ``ts`` minus that start, which overflows for such numbers. Checked for every
dialect (``ts_ok``), so the sinks never see one.
"""

DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}

_FRAME_KEYS = {"v", "acq", "seq", "ts", "shape", "dtype", "exposure_s", "meta"}
_OUTPUT_KEYS = {TOPIC_FRAME: set(), TOPIC_DENOISED: {"engine"}, TOPIC_LLR: {"engine", "columns"}}
"""Keys only the service's outputs carry: on an input ``frame`` they are ``unknown_field``, as the
docs say (they were accepted and then overwritten or dropped, so a bridge never learnt of its mistake)."""
_SERIES_KEYS = {"v", "acq", "ts", "meta", "n_frames", "shape", "dtype", "exposure_s"}


class ProtocolError(ValueError):
    """A message that violates wire format v1; ``reason`` is a short stable label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class HeaderTooLarge(ValueError):
    """Raised by the encoders: the JSON header would pass ``MAX_HEADER_BYTES``."""


@dataclass(frozen=True)
class FrameHeader:
    """Validated header of a frame-carrying message (``frame``, ``denoised``, ``llr``)."""

    acq: str
    seq: int
    ts: float
    shape: tuple[int, int]
    dtype: str
    exposure_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None
    columns: list[list[float]] | None = None
    # the service's receive number (Intake): unique per frame in a run, never on the wire. Outputs carry
    # their raw frame's header, so the recorder finds the part of that raw frame by it, where (acq, seq,
    # ts) repeat (an acq name reused with seq and ts from 0) or were forgotten (a long complete lane)
    rx: int = field(default=-1, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * DTYPES[self.dtype].itemsize

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": VERSION,
            "acq": self.acq,
            "seq": self.seq,
            "ts": self.ts,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "exposure_s": self.exposure_s,
            "meta": self.meta,
        }
        if self.engine is not None:
            d["engine"] = self.engine
        if self.columns is not None:
            d["columns"] = self.columns
        return d


@dataclass(frozen=True)
class SeriesHeader:
    """Header of a ``series_start`` / ``series_end`` message."""

    acq: str
    ts: float
    meta: dict[str, Any] = field(default_factory=dict)
    n_frames: int | None = None
    shape: tuple[int, int] | None = None  # optional: what the series' frames will be
    dtype: str | None = None
    exposure_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": VERSION, "acq": self.acq, "ts": self.ts, "meta": self.meta}
        for key in ("n_frames", "shape", "dtype", "exposure_s"):  # optional: only when given
            if (value := getattr(self, key)) is not None:
                d[key] = list(value) if key == "shape" else value
        return d


@dataclass(frozen=True)
class FrameMessage:
    """A decoded frame: header plus a read-only array that views the received buffer (no copy)."""

    topic: bytes
    header: FrameHeader
    data: np.ndarray


@dataclass(frozen=True)
class SeriesMessage:
    topic: bytes
    header: SeriesHeader


Message = FrameMessage | SeriesMessage


def _dumps(obj: dict[str, Any]) -> bytes:
    if len(hdr := json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")) > MAX_HEADER_BYTES:
        raise HeaderTooLarge(f"header is {len(hdr)} bytes, the limit is {MAX_HEADER_BYTES}")
    return hdr


def encode_frame(
    array: np.ndarray,
    acq: str,
    seq: int,
    ts: float,
    *,
    topic: bytes = TOPIC_FRAME,
    exposure_s: float = 0.0,
    meta: dict[str, Any] | None = None,
    engine: str | None = None,
    columns: list[list[float]] | None = None,
) -> list[bytes | memoryview]:
    """Build the three parts of a frame message; the payload is a view of ``array`` when possible."""
    if topic not in FRAME_TOPICS:
        raise ValueError(f"not a frame topic: {topic!r}")
    if (engine is not None and topic == TOPIC_FRAME) or (columns is not None and topic != TOPIC_LLR):
        raise ValueError(f"engine is for outputs, columns for llr only (topic {topic!r})")
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"frames are 2-D, got shape {arr.shape}")
    name = _dtype_name(arr.dtype)
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
    header = FrameHeader(
        acq=acq,
        seq=int(seq),
        ts=float(ts),
        shape=(int(arr.shape[0]), int(arr.shape[1])),
        dtype=name,
        exposure_s=float(exposure_s),
        meta=dict(meta or {}),
        engine=engine,
        columns=columns,
    )
    _check_frame_header(header, MAX_SIDE**2 * 4)  # any v1 frame: an output is float32, 4x a uint8 input
    return [topic, _dumps(header.to_json()), arr.data.cast("B")]  # arr.data: memoryview(arr), typed on 3.11


def encode_series(
    topic: bytes,
    acq: str,
    ts: float,
    meta: dict[str, Any] | None = None,
    n_frames: int | None = None,
    exposure_s: float | None = None,
) -> list[bytes]:
    if topic not in SERIES_TOPICS:
        raise ValueError(f"not a series topic: {topic!r}")
    header = SeriesHeader(acq, float(ts), dict(meta or {}), n_frames, exposure_s=exposure_s)
    return [topic, _dumps(header.to_json()), b""]


def _dtype_name(dt: np.dtype) -> str:
    dt = np.dtype(dt)
    for name, d in DTYPES.items():
        if dt.kind == d.kind and dt.itemsize == d.itemsize:
            return name
    raise ValueError(f"dtype {dt} is not in wire format v1 ({', '.join(DTYPES)})")


def _as_buffer(part: Any) -> memoryview:
    """Accept bytes, memoryview or a zmq.Frame (``.buffer``) without copying."""
    buf = getattr(part, "buffer", part)
    try:
        mv = memoryview(buf)
    except TypeError as exc:
        raise ProtocolError("bad_part", type(part).__name__) from exc
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    """A finite number a float holds (``math.isfinite(10**400)`` raised OverflowError, not bad_ts)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and abs(x) <= sys.float_info.max


def ts_ok(ts: Any) -> TypeGuard[float]:
    """A finite number of Unix seconds between ``TS_MIN`` and ``TS_MAX`` (see there for why)."""
    return _is_num(ts) and TS_MIN <= ts <= TS_MAX


def finite_json(obj: Any, max_items: int = 100_000) -> bool:
    """True when a decoded JSON value holds no NaN / Infinity anywhere (iteratively: no recursion limit).

    ``json.loads`` accepts ``NaN``, ``Infinity`` and overflowing numbers such as ``1e400`` (inf);
    the service's own headers are written with ``allow_nan=False``, so such a value in ``meta``
    would make every output of that frame unsendable. Checked at the edge, like every other field.
    """
    stack, seen = [obj], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > max_items:
            return False
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not _is_num(v):  # NaN, Infinity, or an integer too large for a float
                return False
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return True


def nested_deeper(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when a decoded JSON value nests objects / arrays more than ``limit`` levels (iteratively)."""
    stack = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def check_meta(meta: Any) -> dict[str, Any]:
    """``meta`` must be a JSON object without NaN / Infinity (reason ``bad_meta``)."""
    if not isinstance(meta, dict):
        raise ProtocolError("bad_meta", type(meta).__name__)
    if not finite_json(meta):
        raise ProtocolError("bad_meta", "NaN or Infinity in meta")
    return meta


def _check_shape(shape: Any) -> tuple[int, int]:
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) for s in shape)):
        raise ProtocolError("bad_shape", repr(shape)[:40])
    if not all(1 <= s <= MAX_SIDE for s in shape):
        raise ProtocolError("bad_shape", repr(shape)[:40])
    return shape[0], shape[1]


def _check_acq(acq: Any) -> str:
    if not isinstance(acq, str) or not (1 <= len(acq) <= MAX_ACQ_LEN) or not acq.isprintable():
        raise ProtocolError("bad_acq", repr(acq)[:80])
    return acq


def _check_frame_header(h: FrameHeader, max_payload: int) -> None:
    _check_acq(h.acq)
    if not (0 <= h.seq <= MAX_SEQ):
        raise ProtocolError("bad_seq", str(h.seq))
    if not ts_ok(h.ts):
        raise ProtocolError("bad_ts", repr(h.ts)[:40])
    if h.dtype not in DTYPES:
        raise ProtocolError("bad_dtype", h.dtype)
    if len(h.shape) != 2 or not all(1 <= s <= MAX_SIDE for s in h.shape):
        raise ProtocolError("bad_shape", str(h.shape))
    if h.nbytes > max_payload:
        raise ProtocolError("too_large", f"{h.nbytes} > {max_payload}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Repeated keys (anywhere) are ``bad_json``: ``{"seq":-1,"seq":0}`` read as seq 0 (``json.loads``
    keeps the last; other languages' parsers may keep the first). Costs ~0.5 us a header."""
    if len(obj := dict(pairs)) != len(pairs):
        keys = [k for k, _ in pairs]
        raise ProtocolError("bad_json", f"duplicate key {next(k for k in obj if keys.count(k) > 1)!r}"[:80])
    return obj


def _parse_int(s: str) -> int | float:
    """Past 310 digits an integer is beyond any float (past 4300 ``int()`` raises ValueError): inf."""
    return int(s) if len(s) <= 310 else (-math.inf if s.startswith("-") else math.inf)


_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_int=_parse_int)


def _field(obj: dict[str, Any], key: str, reason: str) -> Any:
    """A required header key; a missing one is named as missing (it was logged as ``bad_seq: None``)."""
    if key not in obj:
        raise ProtocolError(reason, f'no "{key}" key')
    return obj[key]


def _parse_header(part: Any) -> dict[str, Any]:
    mv = _as_buffer(part)
    if len(mv) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", str(len(mv)))
    try:
        obj = _JSON.decode(text := bytes(mv).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", str(exc)[:80]) from exc
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and nested_deeper(obj):  # (counts: a fast path)
        raise ProtocolError("bad_json", f"nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "header is not an object")
    if (v := _field(obj, "v", "bad_version")) != VERSION or not _is_int(v):
        raise ProtocolError("bad_version", repr(v)[:40])
    return obj


def decode(parts: list[Any], max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """Validate and decode one multipart message; raise ProtocolError on anything wrong.

    The returned frame array is a read-only view of the payload buffer: no copy is made, so the
    caller keeps the zmq.Frame alive as long as the array (numpy holds a reference through the view).
    """
    if len(parts) != 3:
        raise ProtocolError("bad_parts", f"{len(parts)} parts")
    topic = bytes(_as_buffer(parts[0]))
    if topic not in ALL_TOPICS:
        raise ProtocolError("bad_topic", repr(topic[:40]))
    obj = _parse_header(parts[1])
    payload = _as_buffer(parts[2])
    if topic in SERIES_TOPICS:
        return SeriesMessage(topic, _series_header(obj, payload))
    header = _frame_header(obj, max_payload, topic)
    if len(payload) != header.nbytes:
        raise ProtocolError("bad_length", f"payload {len(payload)} != {header.nbytes}")
    data = np.frombuffer(payload, dtype=DTYPES[header.dtype]).reshape(header.shape)
    data.flags.writeable = False  # shared with the receive buffer and with every consumer
    return FrameMessage(topic, header, data)


def _series_header(obj: dict[str, Any], payload: memoryview) -> SeriesHeader:
    unknown = set(obj) - _SERIES_KEYS
    if unknown:
        raise ProtocolError("unknown_field", ",".join(sorted(unknown))[:80])
    if len(payload) != 0:
        raise ProtocolError("bad_length", "series messages carry no payload")
    ts = obj.get("ts", time.time())  # optional here: the time it was received (it read 0.0, 1970)
    n = obj.get("n_frames")
    if not ts_ok(ts):
        raise ProtocolError("bad_ts", repr(ts)[:40])
    meta = check_meta(obj.get("meta", {}))
    if n is not None and not (_is_int(n) and n >= 0):
        raise ProtocolError("bad_n_frames", repr(n)[:40])
    acq = _check_acq(_field(obj, "acq", "bad_acq"))
    # optional announcements of what the series will hold: validated like a frame's fields
    shape = obj.get("shape")
    if shape is not None:
        shape = _check_shape(shape)
    dtype = obj.get("dtype")
    if dtype is not None and not (isinstance(dtype, str) and dtype in DTYPES):
        raise ProtocolError("bad_dtype", repr(dtype)[:40])
    exposure = obj.get("exposure_s")
    if exposure is not None and not (_is_num(exposure) and exposure >= 0):
        raise ProtocolError("bad_exposure", repr(exposure)[:40])
    return SeriesHeader(acq, float(ts), meta, n, shape, dtype, None if exposure is None else float(exposure))


def _frame_header(obj: dict[str, Any], max_payload: int, topic: bytes = TOPIC_FRAME) -> FrameHeader:
    unknown = set(obj) - _FRAME_KEYS - _OUTPUT_KEYS[topic]
    if unknown:
        raise ProtocolError("unknown_field", ",".join(sorted(unknown))[:80])
    acq = _check_acq(_field(obj, "acq", "bad_acq"))
    seq = _field(obj, "seq", "bad_seq")
    if not _is_int(seq) or not (0 <= seq <= MAX_SEQ):
        raise ProtocolError("bad_seq", repr(seq)[:40])
    ts = _field(obj, "ts", "bad_ts")
    if not ts_ok(ts):
        raise ProtocolError("bad_ts", repr(ts)[:40])
    shape = _check_shape(_field(obj, "shape", "bad_shape"))
    dtype = _field(obj, "dtype", "bad_dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("bad_dtype", repr(dtype)[:40])
    exposure = obj.get("exposure_s", 0.0)
    if not _is_num(exposure) or exposure < 0:
        raise ProtocolError("bad_exposure", repr(exposure)[:40])
    meta = check_meta(obj.get("meta", {}))
    engine = obj.get("engine")
    if engine is not None and not isinstance(engine, str):
        raise ProtocolError("bad_engine", repr(engine)[:40])
    columns = obj.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise ProtocolError("bad_columns", type(columns).__name__)
    header = FrameHeader(acq, seq, float(ts), shape, dtype, float(exposure), meta, engine, columns)
    _check_frame_header(header, max_payload)
    return header


def ipv6_endpoint(endpoint: str) -> bool:
    """True when a ZeroMQ endpoint names an IPv6 address (``tcp://[::1]:5555``): its socket needs
    ``zmq.IPV6``, without which libzmq refuses a bind ("No such device") and a connect never connects.
    Only literals: under ``zmq.IPV6`` a name resolves to IPv6 first (``localhost`` to ``::1`` where
    /etc/hosts says so), which a peer bound on 127.0.0.1 never answers."""
    for address in endpoint.partition("://")[2].split(";"):  # tcp://source;destination
        host = address.split("/", 1)[0].rpartition(":")[0]
        if host.startswith("[") or ":" in host:
            return True
    return False
