"""``MergeService``: the ZeroMQ side of ``sbd-stream merge`` (the ordering is ``merge/reorder.py``).

It SUB-connects to every ``serve`` instance's publisher, feeds a ``ReorderBuffer`` and republishes on one
PUB socket, with its own Prometheus registry (``sbd_merge_*``), under a ``Supervisor``. It also tells
when the instances' frames of one acquisition name different engines (``EngineCheck``): the merged
stream would alternate between them, which no header of the merged stream shows otherwise.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.merge.inputs import RECONNECT_IVL_MAX_MS, MergeInputs
from sbd_stream.merge.metrics import EngineCheck, MergeMetrics
from sbd_stream.merge.outbox import PACE_S, Outbox
from sbd_stream.merge.reorder import (
    DEFAULT_GAP_TIMEOUT_S,
    DEFAULT_WINDOW,
    OUTPUT_TOPICS,
    Released,
    ReorderBuffer,
)
from sbd_stream.protocol import (
    DEFAULT_MAX_PAYLOAD,
    TOPIC_SERIES_END,
    FrameMessage,
    ProtocolError,
    SeriesHeader,
    SeriesMessage,
    decode,
    encode_series,
    ipv6_endpoint,
)
from sbd_stream.security import CurveSettings, apply_curve, stop_authenticator, warn_if_exposed
from sbd_stream.sinks.xpub import HandshakeWatch, XPubSender, xpub_socket
from sbd_stream.supervisor import Supervisor, wait_running
from sbd_stream.worker import BackgroundWorker
from sbd_stream.zmq_context import end_context, own_context

__all__ = ["RECONNECT_IVL_MAX_MS", "EngineCheck", "MergeMetrics", "MergeService", "run_merge", "status_line"]

log = logging.getLogger(__name__)


class MergeService(BackgroundWorker):
    """SUB to every instance's publisher, reorder, PUB one stream. ``start`` / ``stop`` / ``join``."""

    thread_name = "sbd-merge"
    stage = "merge"

    def __init__(
        self,
        inputs: list[str],
        output: str = "tcp://127.0.0.1:5570",
        window: int = DEFAULT_WINDOW,
        gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S,
        first_seq: int | None = None,
        sndhwm: int = 64,
        rcvhwm: int = 1000,
        max_payload_bytes: int = 2 * DEFAULT_MAX_PAYLOAD,
        context: zmq.Context | None = None,
        metrics: MergeMetrics | None = None,
        supervisor: Supervisor | None = None,
        input_curve: CurveSettings | None = None,
        output_curve: CurveSettings | None = None,
        pace_s: float = PACE_S,
    ) -> None:
        """``input_curve``: CURVE client settings for the instances' publishers (their ``[publish]
        curve``); ``output_curve``: CURVE server settings for the merged stream. None: plain TCP.
        ``pace_s``: how long a message waits for a subscriber's full pipe (merge/outbox.py)."""
        if not inputs:
            raise ValueError("merge needs at least one --input")
        self.metrics = metrics or MergeMetrics()
        self._own_ctx = context is None  # its own: ``_finalize`` ends it once the last messages left
        self.ctx = context or own_context()
        self.max_payload = max_payload_bytes
        self._init_worker(supervisor)
        self.buffer = ReorderBuffer(window, gap_timeout_s, first_seq, on_count=self.metrics.count)
        self.inputs = list(inputs)
        self.conns: MergeInputs | None = None
        self.pub: zmq.Socket | None = None
        self._handshakes: HandshakeWatch | None = None  # subscribers refused at the handshake
        self._said = RateLimitedLog(log)
        self._malformed_logged: set[str] = set()
        self._engines = EngineCheck(self.metrics)
        self._curve_server = output_curve is not None and output_curve.enabled
        try:
            self.conns = MergeInputs(
                self.ctx, self.inputs, rcvhwm, 2 * max_payload_bytes + (1 << 20), input_curve, self.metrics
            )
            self.pub = xpub_socket(self.ctx, sndhwm)  # a PUB to subscribers; series messages survive bursts
            self.sender = XPubSender(self.pub)
            # a released burst waits for a reading subscriber; about one window per topic may wait
            self.outbox = Outbox(self.sender, self.metrics.send_dropped.inc, 2 * window + 2, pace_s)
            self._loop_ident: int | None = None  # the loop's thread: it pumps the outbox every turn
            if output_curve is not None:
                apply_curve(self.pub, output_curve, binds=True, domain="sbd-merge-out")
            warn_if_exposed("merge output", output)
            self.pub.setsockopt(zmq.IPV6, ipv6_endpoint(output))
            try:
                self.pub.bind(output)
            except zmq.ZMQError as e:  # was "merge: Address already in use (addr='tcp://...')": no flag
                raise MergeEndpointError(
                    "--output", output, zmq.strerror(e.errno) if e.errno is not None else str(e), e.errno
                ) from e
            self._handshakes = HandshakeWatch(self.pub, self._handshake_failed)
        except BaseException:
            self._finalize()
            raise
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT) or output

    @property
    def subs(self) -> list[zmq.Socket]:
        """The SUB socket of each input, in ``inputs`` order (one may be re-opened: read it anew)."""
        return [] if self.conns is None else self.conns.socks

    # --- one message -----------------------------------------------------------------------------
    def handle(self, index: int, parts: list[Any], now: float | None = None) -> None:
        """Decode one message of input ``index``, reorder, send what is due (bad input: counted)."""
        now = time.monotonic() if now is None else now
        self.metrics.received.labels(input=str(index)).inc()
        try:
            msg = decode(parts, self.max_payload)
        except ProtocolError as exc:
            self._malformed(exc.reason, str(exc), index)
            return
        if isinstance(msg, SeriesMessage):
            h = msg.header
            self.send(self.buffer.push_series(msg.topic, h.acq, (parts, h), h.meta, now, h.ts))
            return
        assert isinstance(msg, FrameMessage)
        if msg.topic not in OUTPUT_TOPICS:  # raw `frame` topic: not a service's output
            detail = f"topic {msg.topic.decode()!r}: a detector's raw frame, not a serve --output's"
            self._malformed("unexpected_topic", detail, index)
            return
        fh = msg.header
        self._engines(fh.acq, fh.engine, index)
        self.send(self.buffer.push_frame(msg.topic, fh.acq, fh.seq, parts, now, fh.ts))

    def _malformed(self, reason: str, detail: str, index: int) -> None:
        self.metrics.malformed.labels(reason=reason).inc()
        if reason not in self._malformed_logged:
            self._malformed_logged.add(reason)
            text = detail if detail.startswith(f"{reason}:") else f"{reason}: {detail}"
            log.warning(
                "merge: dropped a malformed message from input %d (%s): %s (logged once per reason; "
                "counted in sbd_merge_malformed_total)",
                index,
                self.inputs[index] if 0 <= index < len(self.inputs) else "?",
                text[:120],
            )

    def send(self, released: list[Released]) -> None:
        assert self.pub is not None
        for r in released:
            if r.seq < 0:
                if r.payload is None:  # an end a restart made up: the sender sent none
                    parts, header = [], SeriesHeader(r.acq, time.time(), {"end_reason": "restarted"})
                else:
                    parts, header = r.payload
                if r.merged is not None:  # the end says what the merge saw of the whole series
                    parts = self._end_parts(header, r.merged)
            else:
                parts = r.payload
            self.outbox.put(parts, r.seq < 0)  # sent now, or kept while a subscriber's pipe is full
        if self.outbox and threading.get_ident() != self._loop_ident:
            self.outbox.finish()  # no loop pumps it (a caller without one): wait here, as pump allows
        self.metrics.buffered.set(self.buffer.buffered)

    @staticmethod
    def _end_parts(h: SeriesHeader, merged: dict[str, Any]) -> list[bytes]:
        frames = merged["frames"]
        n = frames.get("denoised", max(frames.values(), default=0))
        return encode_series(TOPIC_SERIES_END, h.acq, h.ts, {**h.meta, "merge": merged}, n)

    def tick(self, now: float | None = None) -> None:
        self.send(self.buffer.poll(time.monotonic() if now is None else now))
        self.outbox.pump()
        if self._handshakes is not None:
            self._handshakes.poll()
        self._said.tick()

    def _handshake_failed(self, cause: str, endpoint: str) -> None:
        """A subscriber of the merged stream refused at the handshake receives nothing: counted, said
        once per cause (it was neither)."""
        self.metrics.output_handshake_failures.labels(cause=cause).inc()
        mismatch = (
            "its security settings do not match the merge's output (CURVE on both sides, the merge's "
            "public key as its server key), or it is no ZeroMQ subscriber"
        )
        why = "its CURVE key is not in the --curve-clients folder" if cause == "refused" else mismatch
        self._said.log(
            f"handshake_{cause}", logging.WARNING, f"subscriber handshakes failed ({cause})",
            "merge output on %s: a subscriber's handshake failed: %s; it receives nothing (counted in "
            "sbd_merge_output_handshake_failures_total{cause=%r})", endpoint, why, cause,
        )  # fmt: skip

    # --- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        assert self.conns is not None
        poller, index = self.conns.poller()
        sup = self.supervisor
        self._loop_ident = threading.get_ident()
        while not self._stop.is_set():
            for sock, _ev in poller.poll(1 if self.outbox else 50):  # a waiting message: retry soon
                for _ in range(64):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    sup.call(self.stage, lambda p, i=index[sock]: self.handle(i, p), parts, what="merging")
            sup.call(self.stage, lambda _x: self.tick(), None, what="a timeout check")
            # a peer libzmq gave up on (refused handshake, protocol error): what came is merged first
            if self.conns.redial(time.monotonic(), lambda s, i: self._drain_inputs({s: i})):
                poller, index = self.conns.poller()
        self._drain_inputs(index)
        self.send(self.buffer.flush(time.monotonic()))
        self.outbox.finish()

    def _drain_inputs(self, index: dict[zmq.Socket, int]) -> None:
        """What already arrived is still merged before the last flush."""
        for sock, i in index.items():
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.supervisor.call(self.stage, lambda p, i=i: self.handle(i, p), parts, what="merging")

    def _finalize(self) -> None:
        if self.conns is not None:
            self.conns.close()
        if self._handshakes is not None:
            self._handshakes.close()  # before its socket: an open monitor holds the context's end
        if self.pub is not None:
            self.pub.close(linger=1000)  # let the last messages (a series_end) leave, bounded
        if self._curve_server:
            stop_authenticator(self.ctx)  # the ZAP thread a CURVE server socket started on this context
        if self._own_ctx:  # waits until what was handed to ZeroMQ has left (at most the 1 s linger):
            end_context(self.ctx)  # a stopped merge dropped the frames and the series_end still queued

    def close(self) -> None:
        """Release the sockets of a service that was never started (a started one closes its own)."""
        if self._thread is None:
            self._finalize()

    def summary(self, elapsed: float) -> dict[str, Any]:
        m = self.metrics
        return {
            "seconds": elapsed,
            "inputs": self.inputs,
            "output": self.endpoint,
            "received": m.total("sbd_merge_received_total"),
            "frames": {t: m.value("sbd_merge_frames_total", {"topic": t}) for t in ("denoised", "llr")},
            "series": m.total("sbd_merge_series_total"),
            "gaps": m.total("sbd_merge_gaps_total"),
            "missing": m.total("sbd_merge_frames_missing_total"),
            "duplicates": m.total("sbd_merge_duplicates_total"),
            "late": m.total("sbd_merge_late_total"),
            "restarts": m.total("sbd_merge_restarts_total"),
            "joined_midseries": m.value("sbd_merge_joined_midseries_total"),
            "engine_mismatch": m.value("sbd_merge_engine_mismatch_total"),
            "malformed": m.total("sbd_merge_malformed_total"),
            "send_dropped": m.value("sbd_merge_send_dropped_total"),
            "buffered": self.buffer.buffered,
            "failure": self.supervisor.failure,
        }


def status_line(svc: MergeService, elapsed: float) -> str:
    """The line ``sbd-stream merge`` prints every few seconds."""
    s = svc.summary(elapsed)
    return (
        f"{elapsed:7.1f}s  in {s['received']:.0f}  out {s['frames']['denoised']:.0f} denoised"
        f" {s['frames']['llr']:.0f} llr  gaps {s['gaps']:.0f} ({s['missing']:.0f} frames)"
        f"  dup {s['duplicates']:.0f}  late {s['late']:.0f}  joined {s['joined_midseries']:.0f}"
        f"  malformed {s['malformed']:.0f}"
        f"  held {s['buffered']}"
    )


class MergeEndpointError(OSError):
    """``--output`` or ``--metrics-port`` cannot be bound: ``FLAG WHERE: reason``, as ``serve`` says it.

    Why: a busy ``--output`` read "merge: Address already in use (addr='tcp://...')", naming no flag,
    unlike ``serve``'s one line for the same fault (audit h34); a port in use now also says what to do
    (``httpd.IN_USE_HINT``), or ``hint`` where the merge's own other port holds it."""

    def __init__(
        self, flag: str, where: str, reason: str, code: int | None = None, hint: str | None = None
    ) -> None:
        from sbd_stream.httpd import IN_USE_HINT, ZMQ_IN_USE_HINT

        self.flag, self.where, self.reason, self.code = flag, where, reason, code
        if code == errno.EADDRINUSE:
            reason += f" ({hint or (IN_USE_HINT if flag == '--metrics-port' else ZMQ_IN_USE_HINT)})"
        super().__init__(f"{flag} {where}: {reason}")


def _output_on(output: str, host: str, port: int) -> bool:
    """Whether binding the ZeroMQ endpoint ``output`` takes ``host:port`` too (the merge's own metrics
    port): ``--output tcp://127.0.0.1:P --metrics-port P`` read "another sbd-stream?" (review h34)."""
    from sbd_stream.httpd import binds_overlap

    out_host, _, out_port = output.partition("://")[2].rpartition(":")
    bare = out_host.strip("[]")
    return (
        out_port.isdigit()
        and int(out_port) == port
        and binds_overlap("" if bare == "*" else bare, host, port)
    )


_ANY_HOST = ("0.0.0.0", "*", "[::]", "::")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def endpoint_conflicts(inputs: list[str], output: str) -> str | None:
    """What is wrong with ``--input`` / ``--output`` together, else None: an input given twice (each of
    its messages came twice: every frame counted a duplicate, its traffic doubled) or the merge's own
    output as an input (it read back what it sent). Before, both ran without a word."""
    seen: set[str] = set()
    for address in inputs:
        key = address.strip().rstrip("/")
        if key in seen:
            return f"--input {address} is given twice (one --input per instance)"
        seen.add(key)
    out = output.strip().rstrip("/")
    out_host, _, out_port = out.rpartition(":")
    for address in inputs:
        key = address.strip().rstrip("/")
        host, _, port = key.rpartition(":")
        if key == out or (port == out_port and out_host.endswith(_ANY_HOST) and host.endswith(_LOOPBACK)):
            return f"--input {address} is this merge's own --output {output} (give the instances' outputs)"
    return None


def run_merge(
    inputs: list[str],
    output: str,
    stop: threading.Event,
    window: int = DEFAULT_WINDOW,
    gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S,
    first_seq: int | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    status: Callable[[str], None] | None = None,
    status_every_s: float = 2.0,
    started: Callable[[MergeService], None] | None = None,
    input_curve: CurveSettings | None = None,
    output_curve: CurveSettings | None = None,
) -> dict[str, Any]:
    """Merge until ``stop`` is set, then release what is held; returns the final counters."""
    if (problem := endpoint_conflicts(inputs, output)) is not None:
        raise ValueError(problem)
    metrics = MergeMetrics()
    sup = Supervisor(metrics)
    server = None
    if metrics_port is not None:  # first: a busy port was "[Errno 98] Address already in use", no port named
        from sbd_stream.metrics_http import MetricsServer

        try:
            server = MetricsServer(metrics.registry, metrics_host, metrics_port, sup.health)
        except OSError as e:  # the port as given (the host is not an option here)
            where = f"{metrics_port} ({metrics_host})"
            raise MergeEndpointError("--metrics-port", where, e.strerror or str(e), e.errno) from e
    try:
        svc = MergeService(
            inputs, output, window, gap_timeout_s, first_seq, metrics=metrics, supervisor=sup,
            input_curve=input_curve, output_curve=output_curve,
        )  # fmt: skip
    except BaseException as e:
        if server is not None:
            server.close()
            if (
                isinstance(e, MergeEndpointError)
                and e.code == errno.EADDRINUSE
                and _output_on(output, metrics_host, server.port)
            ):
                hint = "the same port as --metrics-port: give each its own"  # not another program's
                raise MergeEndpointError(e.flag, e.where, e.reason, e.code, hint) from e
        raise
    if server is not None:
        sup.spawn("metrics", server.run, name="sbd-merge-metrics")
    svc.start()
    if started is not None:
        started(svc)
    t0 = time.perf_counter()
    try:
        wait_running(stop, sup, "the merge", status, lambda t: status_line(svc, t), status_every_s)
    finally:
        svc.stop()
        svc.join(5.0)
        if server is not None:
            server.close()
    out = svc.summary(time.perf_counter() - t0)
    if server is not None:
        out["metrics_port"] = server.port
    return out
