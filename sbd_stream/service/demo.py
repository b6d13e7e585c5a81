"""Demo and client helpers: an output subscriber, and emulator + service + subscriber in one process.

The demo is the quickest end-to-end check on a new machine: it shows the live rate and latency and
ends with PSNR against the emulator's ground truth, so a broken engine or wiring is obvious.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from sbd_stream.compute.quality import PAPER_COUNTS_PER_PX, paper_psnr, psnr
from sbd_stream.frames import MAX_OUTPUT_BYTES
from sbd_stream.protocol import (
    TOPIC_SERIES_START,
    FrameMessage,
    ProtocolError,
    SeriesMessage,
    decode,
    ipv6_endpoint,
)
from sbd_stream.service.batch import BatchStage

PROBE_ACQ = "__subscription_probe__"
"""Acquisition name of readiness probes (``handshake``): a ``Collector`` notes them and keeps them apart."""


def handshake(
    send: Callable[[int], object], arrived: Callable[[], int], timeout: float = 30.0, interval: float = 0.05
) -> int:
    """Probe a PUB -> SUB path until it is open, instead of sleeping "long enough"; returns probes sent.

    PUB drops what it sends before the subscriber's subscription has reached it, so a fixed sleep before
    the first frame loses frames on a loaded machine. ``send(i)`` sends probe i; ``arrived()`` is the
    highest probe index the far end has seen (-1: none yet). Probes go one at a time, each given
    ``interval`` to arrive, until one does; then none is sent any more and it waits for the last one
    sent. Messages on a path keep their order, so afterwards no probe is still on its way (counts taken
    now are final) and everything sent from now on reaches the subscriber.
    """
    end = time.monotonic() + timeout
    sent = 0
    while arrived() < 0:
        if time.monotonic() > end:
            raise TimeoutError(f"no probe reached the subscriber in {timeout:.0f} s ({sent} sent)")
        send(sent)
        sent += 1
        until = time.monotonic() + interval
        while arrived() < 0 and time.monotonic() < until:
            time.sleep(0.002)
    while arrived() < sent - 1:
        if time.monotonic() > end:
            raise TimeoutError(f"probe {sent - 1} never reached the subscriber (last seen {arrived()})")
        time.sleep(0.002)
    return sent


def await_subscriber(publisher: Any, collector: Collector, timeout: float = 30.0) -> int:
    """``handshake`` from a service's publisher to ``collector``: ``series_start`` probes of ``PROBE_ACQ``
    through the publisher's queue (the socket belongs to its thread), before the first frame flows."""
    from sbd_stream.sinks.publisher import OutputItem

    def send(i: int) -> None:
        publisher.submit(OutputItem(TOPIC_SERIES_START, PROBE_ACQ, meta={"probe": i}))

    return handshake(send, lambda: collector.probe_seen, timeout)


@dataclass
class Received:
    topic: bytes
    acq: str
    seq: int
    engine: str | None
    data: np.ndarray | None
    header: Any
    t: float = field(default_factory=time.time)  # wall clock, comparable with header ts


class Collector:
    """A subscriber of the service's output (what a viewer would be); keeps what it receives.

    It takes any frame the publisher may send (``frames.MAX_OUTPUT_BYTES``): with the input's 57 MB
    default, every float32 output of a ``demo --shape 4096x4096`` (67 MB) was counted as malformed."""

    def __init__(
        self,
        endpoint: str,
        keep_data: bool | Callable[[int], bool] = True,
        context: zmq.Context | None = None,
        on_message: Callable[[Received], None] | None = None,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IPV6, ipv6_endpoint(endpoint))  # a service publishing on tcp://[::1]:P
        self.sock.connect(endpoint)
        self.keep_data, self.on_message = keep_data, on_message
        self.messages: list[Received] = []
        self.malformed = 0
        self.probe_seen = -1  # highest readiness probe received (``handshake``); probes are not kept
        self.series_end = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sbd-collector", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def frames(self, topic: bytes) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                parts = self.sock.recv_multipart(copy=False)
                try:
                    msg = decode(parts, max_payload=MAX_OUTPUT_BYTES)  # float32 outputs: 4x a uint8 input
                except ProtocolError:
                    self.malformed += 1
                    continue
                if msg.header.acq == PROBE_ACQ:
                    n = msg.header.meta.get("probe", -1) if isinstance(msg, SeriesMessage) else msg.header.seq
                    self.probe_seen = max(self.probe_seen, int(n))
                    continue
                if isinstance(msg, SeriesMessage):
                    rec = Received(msg.topic, msg.header.acq, -1, None, None, msg.header)
                    if msg.topic == b"series_end":
                        self.series_end.set()
                else:
                    assert isinstance(msg, FrameMessage)
                    keep = self.keep_data(msg.header.seq) if callable(self.keep_data) else self.keep_data
                    data = np.array(msg.data) if keep else None
                    h = msg.header
                    rec = Received(msg.topic, h.acq, h.seq, h.engine, data, h)
                self.messages.append(rec)
                if self.on_message is not None:
                    self.on_message(rec)
        finally:
            self.sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{int(q)}": None for q in qs}  # strict JSON: nothing observed is null, not NaN
    arr = np.asarray(values)
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}


def run_demo(
    settings: Any,
    stage: BatchStage | Any,
    emu_cfg: Any,
    status: Callable[[str], None] | None = None,
    status_every_s: float = 1.0,
    truth_frames: int = 64,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Emulator -> service -> subscriber on loopback; returns the summary (also used by tests).

    The summary names both lanes (docs/service.md "Two lanes"): what the live lane showed the
    subscriber (frames per whole second of the acquisition, latency from the detector's send to the
    subscriber's receipt) and, with recording on, what the complete lane left in the recording (raw
    frames, and denoised frames live or completed afterwards), read back from the files. PSNR is
    scored on a sample of ``truth_frames`` frames spread over the series, so a long demo's memory
    stays small. ``stop`` (the command's signals, ``cli.app.on_signals``) ends the acquisition early:
    the emulator's child ends its series, the service drains, the summary covers what was sent.

    A KeyboardInterrupt (a caller without ``stop``) ends the same way, child, service and subscriber
    closed, and then propagates: there is no summary. It used to be swallowed, and one that came
    during the subscriber handshake became ``UnboundLocalError`` instead.
    """
    from sbd_stream.service.build import build_pipeline, start
    from sbd_stream.service.sink import FrameTap
    from sbd_stream.sources.emulator import FrameSource
    from sbd_stream.sources.emulator_process import EmulatorProcess

    ctx: zmq.Context = zmq.Context.instance()
    every = max(1, -(-emu_cfg.n_frames // max(1, truth_frames)))
    sample = {emu_cfg.first_seq + k for k in range(0, emu_cfg.n_frames, every)}
    emu = EmulatorProcess(emu_cfg)  # the detector: a process of its own, as a real one is a device
    sent: dict[int, np.ndarray] = {}  # the scored frames' raw counts, as the service received them

    def keep_raw(frame: Any) -> None:
        if frame.header.acq == emu_cfg.acq and frame.header.seq in sample:
            sent[frame.header.seq] = np.array(frame.data, copy=True)

    try:
        settings.ingest.endpoint = emu.endpoint
        pipe = build_pipeline(settings, stage, context=ctx)
        pipe.add_sink(FrameTap(keep_raw), first=True)
        start(pipe)  # a busy viewer / metrics port: EndpointError, one line at the command
    except BaseException:
        emu.close()
        raise
    assert pipe.publisher is not None
    m = pipe.metrics
    col: Collector | None = None
    t0 = time.perf_counter()
    try:  # a KeyboardInterrupt anywhere in here ends all below, then goes on to the caller
        col = Collector(pipe.publisher.endpoint, keep_data=lambda seq: seq in sample, context=ctx).start()
        await_subscriber(pipe.publisher, col)  # PUB drops what it sends before the subscription arrives
        if stop is None or not stop.is_set():  # a stop during the start: the child sends nothing
            emu.go()
        t0 = time.perf_counter()
        last = 0.0
        while not col.series_end.wait(0.1):
            if stop is not None and stop.is_set():
                break
            if emu.done() and pipe.batcher.idle():
                col.series_end.wait(2.0)
                break
            now = time.perf_counter()
            if status is not None and now - last >= status_every_s:
                last = now
                status(
                    f"received {m.value('sbd_frames_received_total'):5.0f}  "
                    f"live {len(col.frames(b'denoised')):5d}  "
                    f"skipped {m.value('sbd_frames_skipped_total'):4.0f}  "
                    f"completed {m.value('sbd_frames_completed_total'):4.0f}  "
                    f"backlog {m.value('sbd_complete_backlog_frames'):4.0f}  queue {len(pipe.denoise_q):3d}"
                )
    finally:  # each step runs even if one before it was interrupted
        try:
            emu.close()
            t_acq = time.perf_counter() - t0
            if status is not None and pipe.pool.backlog:
                held, queued = len(pipe.pool.backlog), len(pipe.denoise_q)  # queued ones may be skipped too
                status(
                    f"acquisition over: the complete lane denoises the {held} skipped frames it holds"
                    + (f" (and any of the {queued} still queued that the live lane skips)" if queued else "")
                )
        finally:
            try:
                pipe.stop()  # the complete lane finishes its backlog before the recorder closes
            finally:
                if col is not None:
                    col.close()
    wall = time.perf_counter() - t0
    assert col is not None  # made first in the ``try``: nothing before it could have ended it
    den = col.frames(b"denoised")
    src = FrameSource(emu_cfg)  # the truth of a frame is deterministic: scored here, not in the child
    scale = PAPER_COUNTS_PER_PX / float(emu_cfg.dose)  # the paper's metric is defined at 0.45 counts/px
    scores = _scores(den, src, sent, emu_cfg.first_seq, scale)
    lanes = {"live": live_lane(den), "complete": complete_lane(settings, m, emu_cfg.acq)}
    return {
        "source": src.kind.value,
        "engine": str(pipe.stage.denoiser.engine_id),
        **pipe.stage.geometry.describe(),
        "frames_sent": emu.n_sent,
        "frames_received": int(m.value("sbd_frames_received_total")),
        "frames_denoised": int(m.value("sbd_frames_denoised_total")),
        "frames_skipped": int(m.value("sbd_frames_skipped_total")),
        "frames_completed": int(m.value("sbd_frames_completed_total")),
        "frames_published_received": len(den),
        "acquisition_s": t_acq,
        "wall_s": wall,
        "latency_s": lanes["live"]["latency_s"],
        "lanes": lanes,
        "psnr_frames": len(scores["den"]),
        "psnr_raw_db": _mean(scores["raw"]),
        "psnr_denoised_db": _mean(scores["den"]),
        "paper_psnr_raw_db": _mean(scores["raw_paper"]),
        "paper_psnr_denoised_db": _mean(scores["den_paper"]),
        "paper_psnr_scale": scale,
        **({} if scores["den"] else {"psnr_note": _no_psnr_reason(src.kind.value, len(den))}),
        "denoise_overflow": int(m.value("sbd_denoise_overflow_total")),
        "workers": pipe.pool.load(wall),
    }


def _scores(
    den: list[Received], src: Any, sent: dict[int, np.ndarray], first_seq: int, scale: float = 1.0
) -> dict[str, list[float]]:
    """Paper PSNR and PSNR of raw and denoised frames against the truth, on the scored frames.

    The paper PSNR clamps counts to [0, 1] and is defined at its 0.45 counts per vacuum pixel, so frames
    at another dose are scaled by ``scale`` (0.45 / vacuum counts) first, as ``evaluate-images`` and
    ``dose-curve`` do: at 1.8 counts/px (the paper's dose at 0.12 A) every clamped pixel matched and
    the score read ``Infinity``."""
    scores: dict[str, list[float]] = {k: [] for k in ("raw", "den", "raw_paper", "den_paper")}
    for r in den:
        if r.data is None or r.seq not in sent:
            continue
        truth = src.truth_of_frame(r.seq - first_seq)
        if truth is None:
            continue
        raw = sent[r.seq].astype(np.float32)
        scores["den"].append(psnr(r.data, truth, data_range=float(truth.max())))
        scores["raw"].append(psnr(raw, truth, data_range=float(truth.max())))
        scores["den_paper"].append(paper_psnr(r.data * scale, truth * scale))
        scores["raw_paper"].append(paper_psnr(raw * scale, truth * scale))
    return scores


def live_lane(den: list[Received]) -> dict[str, Any]:
    """What the subscriber was shown: frames per whole second (from the first frame shown to the
    last one), and latency = receipt at the subscriber - the detector's send time (``ts``).

    ``per_second`` counts only whole seconds, so a run shown for less than one has none: then
    ``per_second_min`` / ``per_second_mean`` are None (no second was observed, not "all frames in one
    second"), and ``rate_hz`` (frames after the first / time from first to last shown; None with fewer
    than two frames) is the rate over the span that was observed, whatever its length.
    """
    if not den:
        return {
            "frames": 0,
            "per_second": [],
            "per_second_min": None,
            "per_second_mean": None,
            "rate_hz": None,
            "latency_s": percentiles([]),
        }
    t = np.array([r.t for r in den])
    span = float(t.max() - t.min())
    seconds = int(np.floor(span))
    per = np.bincount(((t - t.min()) // 1.0).astype(int), minlength=seconds + 1)[:seconds]
    return {
        "frames": len(den),
        "per_second": [int(v) for v in per],
        "per_second_min": int(per.min()) if per.size else None,
        "per_second_mean": float(per.mean()) if per.size else None,
        "rate_hz": (len(den) - 1) / span if len(den) > 1 and span > 0 else None,
        "latency_s": percentiles([r.t - r.header.ts for r in den]),
        "latency_max_s": float(max(r.t - r.header.ts for r in den)),
    }


def complete_lane(settings: Any, m: Any, acq: str) -> dict[str, Any]:
    """The recording's own count of ``acq``'s raw frames and distinct denoised frames (read back)."""
    out: dict[str, Any] = {
        "completed_after_live": int(m.value("sbd_frames_completed_total")),
        "left_for_offline": int(m.value("sbd_frames_left_for_offline_total")),
        "recording": None,
    }
    if not settings.record.enabled:
        return out
    import h5py

    from sbd_stream.formats.recording import open_recording, recording_parts, safe_name

    raw: set[int] = set()
    den: set[int] = set()
    first = Path(settings.record.directory) / f"{safe_name(acq)}{settings.record.suffix}"
    parts = recording_parts(first) if first.exists() else []
    for part in parts:
        with open_recording(part) as f:
            for kind, seqs in (("raw", raw), ("denoised", den)):
                if kind in f and isinstance(f[kind], h5py.Group) and "seq" in f[kind]:
                    done = np.asarray(f[kind]["complete"][:], dtype=bool)
                    seqs.update(int(q) for q in np.asarray(f[kind]["seq"][:])[done])
    out["recording"] = {
        "files": [str(p) for p in parts],
        "raw_frames": len(raw),
        "denoised_frames": len(den),
        "all_denoised": bool(raw) and raw <= den,
    }
    return out


def _mean(values: list[float]) -> float | None:
    """The mean, or None (strict JSON null) when nothing was scored or a score is not finite."""
    m = float(np.mean(values)) if values else float("nan")
    return m if np.isfinite(m) else None


def _no_psnr_reason(kind: str, shown: int) -> str:
    if kind == "recording":
        return "no PSNR: a recording's raw counts have no clean truth to score against"
    if shown == 0:
        return "no PSNR: no denoised frame reached the subscriber"
    return "no PSNR: the source gives no clean truth for the frames shown"
