"""Seeded generators of valid, malformed, hostile and edge-case input for the service-level fuzz test.

Each generator keeps an oracle of what the service must make of what it sent: every valid frame
(published once, recorded pixel-equal in its own dtype), every rejection by reason, duplicates,
non-finite pixels, stale DECTRIS messages. Hand-made cases state their reason literally (the point
is to check the service against the documented rules, not against its own decoder); only random
garbage is classified by the decoder, because nobody can name the reason of random bytes by hand.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbd_stream.protocol import (
    MAX_ACQ_LEN,
    TS_MAX,
    TS_MIN,
    ProtocolError,
    decode,
    encode_frame,
    encode_series,
)
from sbd_stream.sources.dectris.messages import StreamV1Decoder
from sbd_stream.sources.dectris.sim import v1_detector_config, v1_end, v1_frame, v1_header
from sbd_stream.sources.receiver import max_message_bytes

MAX_PAYLOAD = 64 * 64 * 4  # small, so that an oversized part is cheap to send
SHAPES = ((16, 16), (24, 32), (32, 24), (40, 40))
HUGE = b"\0" * (max_message_bytes(MAX_PAYLOAD) + 1)  # one part over the input socket's MAXMSGSIZE
# extreme but valid header values: accepted, published as sent, recorded as sent and readable
EXTREME_TS = (0.0, -1.5, -1.0e9, TS_MIN, TS_MAX)  # 1e308 and -1e308 are refused (bad_ts): no date
EXTREME_EXPOSURE = (0.0, 1e-9, 1e9)


@dataclass
class Oracle:
    frames: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # must arrive, once
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    stale: int = 0
    nonfinite: dict[tuple[str, int], int] = field(default_factory=dict)
    headers: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)  # (ts, exposure_s)
    extremes: int = 0  # valid frames or names at an extreme value
    big_meta: set[tuple[str, int]] = field(default_factory=set)
    format_changes: int = 0
    acquisitions: int = 0
    sent: int = 0


@dataclass
class Send:
    """One message, and what the service must count for it (the harness keeps running totals)."""

    parts: list[Any]
    oversized: bool = False
    reason: str | None = None  # rejected, counted under this reason
    frame: tuple[str, int] | None = None  # a valid frame: published once, recorded once
    duplicate: bool = False
    stale: bool = False  # DECTRIS: a message of a series the service already closed


def _pixels(rng: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    counts = rng.poisson(0.45, shape)
    if dtype in ("float32", "float16"):
        arr = counts.astype(dtype)
        if rng.random() < 0.3 and dtype == "float32":
            arr.flat[rng.integers(arr.size)] = 70000.5  # not representable in any integer dtype
        return arr
    arr = counts.astype(dtype)
    if dtype == "uint32" and rng.random() < 0.3:
        arr.flat[rng.integers(arr.size)] = 70000
    return arr


def _garbage(rng: np.random.Generator) -> list[bytes]:
    n = int(rng.integers(1, 6))  # ZeroMQ has no empty message
    return [rng.bytes(int(rng.integers(0, 64))) for _ in range(n)]


class WireFuzz:
    """Wire format v1: frames, series, and every kind of bad message, from a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.o = Oracle()
        self.n_acq = 0
        self.acq = ""
        self.seq = 0
        self.last: list[Any] | None = None
        self.shape: tuple[int, int] = SHAPES[0]
        self.dtype = "uint16"
        self.ts, self.exposure = 0.0, 0.025

    # --- valid -----------------------------------------------------------------------------------
    def _new_acq(self, start: bool) -> list[Send]:
        r = self.rng
        self.n_acq += 1
        self.o.acquisitions += 1
        self.acq = f"w{self.n_acq:05d}" + (" é/x" if r.random() < 0.1 else "")
        x = r.random()
        if x < 0.05:  # at the length limit; file names keep 120 characters, so these collide there
            self.acq = "L" * (MAX_ACQ_LEN - 6) + f"{self.n_acq:06d}"
            self.o.extremes += 1
        elif x < 0.08:
            self.acq = (f"w{self.n_acq:05d}" + "é/" * MAX_ACQ_LEN)[:MAX_ACQ_LEN]
            self.o.extremes += 1
        self.seq, self.last = 0, None
        self.shape = SHAPES[int(r.integers(len(SHAPES)))]
        self.dtype = str(r.choice(["uint16", "uint16", "uint8", "uint32", "float32", "float16"]))
        if not start:
            return []
        hdr: dict[str, Any] = {"v": 1, "acq": self.acq, "ts": 1.0, "meta": {"k": [1, {"x": "y"}]}}
        if r.random() < 0.5:  # the optional, validated announcements
            hdr |= {"shape": list(self.shape), "dtype": self.dtype, "exposure_s": 0.025, "n_frames": 5}
        return [Send([b"series_start", json.dumps(hdr).encode(), b""])]

    def _frame(self) -> list[Send]:
        r = self.rng
        if r.random() < 0.04 and self.seq > 0:  # a new shape within the acquisition: a new file part
            self.shape = SHAPES[(SHAPES.index(self.shape) + 1) % len(SHAPES)]
            self.o.format_changes += 1
        if r.random() < 0.04 and self.seq > 0:  # a new dtype within the acquisition: never cast
            self.dtype = "float32" if self.dtype != "float32" else "uint16"
            self.o.format_changes += 1
        arr = _pixels(r, self.shape, self.dtype)
        key = (self.acq, self.seq)
        self.ts, self.exposure = 1000.0 + self.seq, 0.025
        if r.random() < 0.1:
            self.ts = float(EXTREME_TS[int(r.integers(len(EXTREME_TS)))])
            self.o.extremes += 1
        if r.random() < 0.1:
            self.exposure = float(EXTREME_EXPOSURE[int(r.integers(len(EXTREME_EXPOSURE)))])
            self.o.extremes += 1
        self.o.headers[key] = (self.ts, self.exposure)
        meta: dict[str, Any] = {"i": self.seq, "nested": {"a": [1.5, None, True, "é"]}, "big": 2**70}
        if r.random() < 0.015:  # fits the 64 KiB input header, but not once the engine id is added
            meta = {"pad": ""}
            size = len(bytes(self._encode(arr, meta)[1]))
            meta = {"pad": "x" * (65536 - size - 4)}
            self.o.big_meta.add(key)
        elif self.dtype.startswith("float") and r.random() < 0.3:
            bad = r.choice(arr.size, size=int(r.integers(1, 4)), replace=False)
            arr.flat[bad] = r.choice([np.nan, np.inf, -np.inf], size=len(bad))
            self.o.nonfinite[key] = len(bad)
        parts = self._encode(arr, meta)
        self.o.frames[key] = arr
        self.last = parts
        self.seq += 2 if r.random() < 0.05 else 1  # sometimes a gap
        return [Send(parts, frame=key)]

    def _encode(self, arr: np.ndarray, meta: dict[str, Any]) -> list[Any]:
        return encode_frame(arr, self.acq, self.seq, self.ts, exposure_s=self.exposure, meta=meta)

    # --- invalid ---------------------------------------------------------------------------------
    def _hdr(self, **kw: Any) -> dict[str, Any]:
        h = {"v": 1, "acq": self.acq or "x", "seq": self.seq, "ts": 1.0, "shape": [4, 4], "dtype": "uint8"}
        return h | kw

    def _bad(self) -> Send:
        r = self.rng
        pay = b"\0" * 16

        def fr(reason: str, topic: bytes = b"frame", raw: bytes | None = None, p: bytes = pay, **kw: Any):
            hdr = raw if raw is not None else json.dumps(self._hdr(**kw)).encode()
            return reason, [topic, hdr, p]

        def ser(reason: str, **kw: Any):
            return reason, [b"series_start", json.dumps({"v": 1, "acq": "s", "ts": 0} | kw).encode(), b""]

        big = json.dumps(self._hdr()).encode()
        cases = [
            fr("bad_meta", meta={"x": float("nan")}),  # json.dumps writes the literal NaN
            fr("bad_meta", meta={"a": [1, {"b": float("inf")}]}),
            fr("bad_meta", meta={"c": -float("inf")}),
            fr("bad_meta", raw=big[:-1] + b',"meta":{"v":[1e400]}}'),  # overflows to inf when parsed
            fr("bad_meta", meta=[1]),
            ser("bad_meta", meta={"x": float("nan")}),
            ser("bad_shape", shape=[0, 5]),
            ser("bad_shape", shape="64x64"),
            ser("bad_shape", shape=[1, 2, 3]),
            ser("bad_dtype", dtype="complex64"),
            ser("bad_dtype", dtype=7),
            ser("bad_exposure", exposure_s=-1),
            ser("bad_exposure", exposure_s="long"),
            ser("bad_exposure", exposure_s=float("inf")),
            ser("bad_n_frames", n_frames=-1),
            ("bad_parts", [b"frame", big]),
            ("bad_parts", [b"frame", big, pay, pay]),
            ("bad_topic", [b"frames", big, pay]),
            fr("bad_json", raw=b"{"),
            fr("bad_json", raw=b"\xff\xfe{}"),
            fr("bad_json", raw=b"[1, 2]"),
            fr("bad_version", v=2),
            fr("unknown_field", extra=1),
            fr("bad_acq", acq=""),
            fr("bad_acq", acq="a" * 300),
            fr("bad_acq", acq="a\x00b"),
            fr("bad_seq", seq=-1),
            fr("bad_seq", seq=1.5),
            fr("bad_seq", seq=2**64),
            fr("bad_ts", ts="now"),
            fr("bad_ts", ts=float("nan")),
            fr("bad_ts", ts=1e308),  # a number, but no date a recording can state
            fr("bad_ts", ts=-1e308),
            fr("bad_ts", ts=TS_MAX + 1),
            ser("bad_ts", ts=1e308),
            fr("bad_acq", acq="a" * (MAX_ACQ_LEN + 1)),
            fr("bad_shape", shape=[0, 5]),
            fr("bad_shape", shape=[20000, 2]),
            fr("bad_dtype", dtype="float64"),
            fr("bad_exposure", exposure_s=-0.5),
            fr("too_large", shape=[128, 128], dtype="float32"),
            fr("bad_length", p=b"\0" * 15),
            fr("bad_length", p=b"\0" * 17),
            fr("header_too_large", raw=b" " * 65537),
            fr("unexpected_topic", topic=b"denoised"),
            fr("unexpected_topic", topic=b"llr"),
            # output-only keys on an input frame, even well-formed ones (wire-format.md)
            fr("unknown_field", engine="unet4@3f2a9c"),
            fr("unknown_field", columns=[[1.0, 2.0, 3.5, 0.4]]),
        ]
        if r.random() < 0.15:
            parts = _garbage(r)
            try:
                decode(parts, MAX_PAYLOAD)
            except ProtocolError as exc:
                self.o.reasons[exc.reason] += 1
                return Send(parts, reason=exc.reason)
            return self._bad()  # random bytes that decode (vanishingly rare): draw again
        reason, parts = cases[int(r.integers(len(cases)))]
        self.o.reasons[reason] += 1
        return Send(parts, reason=reason)

    def events(self, n: int, n_oversized: int = 2) -> list[Send]:
        """``n`` messages; the oversized parts are spread over the run."""
        out: list[Send] = self._new_acq(start=True)
        big_at = {int(n * (k + 1) / (n_oversized + 1)) for k in range(n_oversized)}
        while len(out) < n:
            r = self.rng.random()
            if len(out) in big_at:
                big_at.discard(len(out))
                self.o.reasons["oversized"] += 1
                hdr = json.dumps(self._hdr()).encode()
                out.append(Send([b"frame", hdr, HUGE], oversized=True, reason="oversized"))
                out += self._new_acq(start=True)  # the harness's probes came between: start afresh
            elif r < 0.07:  # a new acquisition, announced or not; most never get a series_end
                out += self._new_acq(start=self.rng.random() < 0.5)
            elif r < 0.09:
                out.append(Send(encode_series(b"series_end", self.acq, 2.0)))
                out += self._new_acq(start=True)
            elif r < 0.12 and self.last is not None and self.seq > 1:
                out.append(Send(list(self.last), duplicate=True))  # a repeated frame: dropped
                self.o.duplicates += 1
            elif r < 0.55:
                out += self._frame()
            else:
                out.append(self._bad())
        self.o.sent = len(out)
        return out


class DectrisFuzz:
    """DECTRIS SIMPLON stream v1: series, images in three encodings, and bad or stale messages."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.o = Oracle()
        self.series = 1000
        self.open = False
        self.frame = 0
        self.last: list[Any] | None = None
        self.closed: list[tuple[int, list[Any]]] = []  # (series, one of its frames) after its end
        self.shape: tuple[int, int] = SHAPES[0]
        self.dtype = "uint16"

    def _start(self) -> list[Send]:
        r = self.rng
        self.series += 1
        self.o.acquisitions += 1
        self.frame, self.last = 0, None
        self.open = True  # whether the service has this series open (an end for it is not stale)
        self.shape = SHAPES[int(r.integers(len(SHAPES)))]
        self.dtype = str(r.choice(["uint16", "uint16", "uint8", "uint32"]))
        cfg = v1_detector_config(self.shape, self.dtype, 8)
        x = r.random()
        if x < 0.1:  # NaN is not JSON: the header is refused, its frames later join the series
            self.open = False
            self.o.reasons["bad_json"] += 1
            bad = json.dumps(cfg | {"x": float("nan")}).encode()
            return [Send([v1_header(self.series, None)[0], bad], reason="bad_json")]
        if x < 0.2:  # 1e400 parses as inf: refused at the edge (bad_meta); the state machine opened it
            self.o.reasons["bad_meta"] += 1
            raw = json.dumps(cfg).encode()[:-1] + b',"gain":1e400}'
            return [Send([v1_header(self.series, None)[0], raw], reason="bad_meta")]
        if x < 0.3:  # no header at all: the service joins the series at its first frame
            self.open = False
            return []
        return [Send(v1_header(self.series, cfg))]

    def _frame(self) -> list[Send]:
        r = self.rng
        if r.random() < 0.04 and self.frame > 0:
            self.shape = SHAPES[(SHAPES.index(self.shape) + 1) % len(SHAPES)]
            self.o.format_changes += 1
        if r.random() < 0.04 and self.frame > 0:
            self.dtype = "uint32" if self.dtype != "uint32" else "uint16"
            self.o.format_changes += 1
        arr = _pixels(r, self.shape, self.dtype)
        enc = str(r.choice(["bslz4", "bslz4", "lz4", "raw"]))
        parts = v1_frame(arr, self.series, self.frame, enc)
        key = (f"dectris-{self.series}", self.frame)
        self.o.frames[key] = arr
        self.last, self.open = parts, True
        self.frame += 2 if r.random() < 0.05 else 1
        return [Send(parts, frame=key)]

    def _bad(self) -> Send:
        r = self.rng
        arr = np.zeros((4, 4), np.uint16)
        good = v1_frame(arr, self.series, self.frame)

        def img(reason: str, i: int, patch: dict[str, Any] | None = None, raw: bytes | None = None):
            parts = list(good)
            parts[i] = raw if raw is not None else json.dumps(json.loads(parts[i]) | (patch or {})).encode()
            return reason, parts

        cases = [
            ("bad_json", [b"\xff"]),
            ("bad_json", [b"[1, 2]"]),
            ("bad_parts", good[:3]),
            ("bad_parts", [*good, *good, *good, *good, b"{}"]),
            ("bad_htype", [b'{"htype": "dimage-9.9"}']),
            img("bad_seq", 0, {"frame": -1}),
            img("bad_series", 0, {"series": "x"}),
            img("bad_htype", 1, {"htype": "nope"}),
            img("bad_shape", 1, {"shape": [0, 5]}),
            img("bad_shape", 1, {"shape": [20000, 2]}),
            img("too_large", 1, {"shape": [128, 128], "type": "uint32"}),
            img("bad_dtype", 1, {"type": "float32"}),
            img("bad_encoding", 1, {"encoding": "zstd<"}),
            img("bad_encoding", 1, {"encoding": "bs8-lz4<"}),
            img("bad_length", 1, {"size": 3}),
            (
                "bad_blob",
                [good[0], json.dumps(json.loads(good[1]) | {"size": 5}).encode(), b"\0" * 5, *good[3:]],
            ),
            img("bad_htype", 3, {"htype": "dconfig-0"}),
            img("bad_ts", 3, {"real_time": -5}),
            img("bad_json", 1, raw=b'{"htype": "dimage_d-1.0", "shape": [NaN, 4]}'),
            ("bad_series", [b'{"htype": "dheader-1.0", "series": "abc"}']),
            ("bad_header_detail", [b'{"htype": "dheader-1.0", "series": 5, "header_detail": "most"}']),
        ]
        if r.random() < 0.15:
            parts = _garbage(r)
            try:
                StreamV1Decoder(MAX_PAYLOAD).decode(parts)
            except ProtocolError as exc:
                self.o.reasons[exc.reason] += 1
                return Send(parts, reason=exc.reason)
            return self._bad()  # random bytes that decode: draw again
        reason, parts = cases[int(r.integers(len(cases)))]
        self.o.reasons[reason] += 1
        return Send(parts, reason=reason)

    def events(self, n: int, n_oversized: int = 1) -> list[Send]:
        out: list[Send] = self._start()
        big_at = {int(n * (k + 1) / (n_oversized + 1)) for k in range(n_oversized)}
        while len(out) < n:
            x = self.rng.random()
            if len(out) in big_at:
                big_at.discard(len(out))
                self.o.reasons["oversized"] += 1
                out.append(Send([b"{}", HUGE], oversized=True, reason="oversized"))
            elif x < 0.04:
                out += self._start()  # the open series (if any) never got its end: superseded
            elif x < 0.07:
                out.append(Send(v1_end(self.series), stale=not self.open))  # never opened: a stale end
                self.o.stale += 0 if self.open else 1
                if self.last is not None:
                    self.closed.append((self.series, self.last))
                out += self._start()
            elif x < 0.08 and self.closed:
                out.append(Send(list(self.closed[-1][1]), stale=True))  # a frame of a series already ended
                self.o.stale += 1
            elif x < 0.10 and self.last is not None and self.frame > 1:
                out.append(Send(list(self.last), duplicate=True))
                self.o.duplicates += 1
            elif x < 0.55:
                out += self._frame()
            else:
                out.append(self._bad())
        self.o.sent = len(out)
        return out
