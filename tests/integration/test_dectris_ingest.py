"""The DECTRIS series state machine (stale draining, timeouts, joins, continuity) and its sockets.

The state machine is a receiver plug-in without a socket, so most tests feed it parts directly;
the socket tests go through ``open_receiver`` like the service does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from sbd_stream.config import DectrisInput, IngestSettings
from sbd_stream.frames import Frame, FrameHandler
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD, SeriesMessage
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.sim import v1_end, v1_frame, v1_header, v1_series, v2_end, v2_image, v2_start
from sbd_stream.sources.dialect import Emitter
from sbd_stream.sources.receiver import Receiver, open_receiver

SHAPE = (24, 40)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.poisson(0.45, SHAPE).astype(np.uint16) for _ in range(n)]


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.series: list[SeriesMessage] = []

    def events(self) -> list[tuple[str, str, object]]:
        out = [(s.topic.decode(), s.header.acq, s.header.meta.get("end_reason")) for s in self.series]
        return out


def make(dialect: str = "dectris-stream-v1", timeout_s: float = 5.0) -> tuple[DectrisDialect, Sink]:
    sink = Sink()
    inp = DectrisInput.model_validate({"dialect": dialect, "series_timeout_s": timeout_s})
    emit = Emitter(Metrics(), sink.frames.append, sink.series.append)
    return DectrisDialect(inp, DEFAULT_MAX_PAYLOAD, emit), sink


def receiver(
    dialect: str, endpoint: str, socket: str, on_frame: FrameHandler | None = None
) -> tuple[Receiver, Sink]:
    """A connecting receiver, built from settings the way the service builds it."""
    sink = Sink()
    inp = {"dialect": dialect, "socket_type": socket, "series_timeout_s": 5.0}
    settings = IngestSettings.model_validate({"endpoint": endpoint, "mode": "connect", "input": inp})
    return open_receiver(settings, Metrics(), on_frame or sink.frames.append, sink.series.append), sink


def val(ing: DectrisDialect | Receiver, name: str) -> float:
    return ing.metrics.value(name)


def test_full_series_and_continuity_accounting() -> None:
    ing, sink = make()
    data = frames(6)
    msgs = v1_series(data, 11)
    # frame 2 lost, frame 4 repeated
    for i, m in enumerate(msgs):
        if i == 3:
            continue
        ing.handle(m)
        if i == 5:
            ing.handle(m)
    assert [f.header.seq for f in sink.frames] == [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(sink.frames[-1].data, data[5])
    assert all(f.chunk is not None and f.series == 11 for f in sink.frames)
    assert val(ing, "sbd_frames_missing_total") == 1 and val(ing, "sbd_frames_duplicate_total") == 1
    end = sink.series[-1]
    assert end.topic == b"series_end" and end.header.n_frames == 5
    assert end.header.meta["frames_expected"] == 6 and end.header.meta["end_reason"] == "series_end"


def test_stale_messages_of_an_earlier_series_are_drained() -> None:
    ing, sink = make()
    a, b = frames(3, 1), frames(3, 2)
    ing.handle(v1_header(1, None, "none"))
    ing.handle(v1_frame(a[0], 1, 0))
    ing.handle(v1_end(1))
    ing.handle(v1_frame(a[1], 1, 1))  # late frame of series 1, after its end
    ing.handle(v1_header(2, None, "none"))
    ing.handle(v1_frame(a[2], 1, 2))  # still queued from series 1 when series 2 began
    for i, f in enumerate(b):
        ing.handle(v1_frame(f, 2, i))
    ing.handle(v1_end(1))  # a duplicate end of the old series must not close the new one
    ing.handle(v1_end(2))
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [("dectris-1", 0)] + [
        ("dectris-2", i) for i in range(3)
    ]
    assert val(ing, "sbd_dectris_stale_messages_total") == 3
    assert sink.events() == [
        ("series_start", "dectris-1", None),
        ("series_end", "dectris-1", "series_end"),
        ("series_start", "dectris-2", None),
        ("series_end", "dectris-2", "series_end"),
    ]


def test_inactivity_timeout_closes_a_series_without_end() -> None:
    ing, sink = make(timeout_s=2.0)
    ing.handle(v1_header(3, None, "none"))
    ing.handle(v1_frame(frames(1)[0], 3, 0))
    t = ing.state.last_activity
    assert not ing.check_timeout(t + 1.0)
    assert ing.check_timeout(t + 2.5)
    assert sink.events()[-1] == ("series_end", "dectris-3", "timeout")
    assert val(ing, "sbd_dectris_series_timeouts_total") == 1
    assert not ing.check_timeout(t + 10)  # nothing open any more
    ing.handle(v1_frame(frames(1)[0], 3, 1))  # the tail of the timed-out series resumes it (not stale)
    assert len(sink.frames) == 2 and val(ing, "sbd_dectris_stale_messages_total") == 0
    assert sink.events()[-1] == ("series_start", "dectris-3", None)


def test_join_mid_series_and_restart_with_the_same_series_id() -> None:
    ing, sink = make()
    data = frames(4)
    ing.handle(v1_frame(data[2], 8, 2))  # receiver started after the header went out
    ing.handle(v1_frame(data[3], 8, 3))
    ing.handle(v1_end(8))
    assert sink.series[0].header.meta["joined"] is True and val(ing, "sbd_dectris_series_joined_total") == 1
    # the sender restarts and re-uses series 8 (the LiberTEM simulator does): a new start re-opens it
    for m in v1_series(data, 8):
        ing.handle(m)
    assert [f.header.seq for f in sink.frames] == [2, 3, 0, 1, 2, 3]
    # a new series starting before the old one ended closes it as superseded
    ing.handle(v1_header(9, None, "none"))
    ing.handle(v1_frame(data[0], 9, 0))
    ing.handle(v1_header(10, None, "none"))
    assert ("series_end", "dectris-9", "superseded") in sink.events()


def _recv_until(ing: Receiver, sink: Sink, n_series_end: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while sum(s.topic == b"series_end" for s in sink.series) < n_series_end and time.monotonic() < end:
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("dialect", "socket"), [("dectris-stream-v1", "pull"), ("dectris-stream-v2", "sub")])
def test_sockets_push_pull_and_pub_sub(dialect: str, socket: str) -> None:
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.PUSH if socket == "pull" else zmq.XPUB)
    port = out.bind_to_random_port("tcp://127.0.0.1")
    ing, sink = receiver(dialect, f"tcp://127.0.0.1:{port}", socket)
    ing.start()
    data = frames(5, 4)
    try:
        if socket == "sub":  # readiness, not a sleep: the XPUB sees the receiver's subscription arrive,
            assert out.poll(20_000), "the receiver never subscribed"  # and drops nothing sent after it
            out.recv_multipart()
        if dialect == "dectris-stream-v1":
            msgs = v1_series(data, 21)
        else:
            msgs = [[v2_start(21, "s-21", SHAPE, "uint16", 5)]]
            msgs += [[v2_image(f, 21, "s-21", i)] for i, f in enumerate(data)] + [[v2_end(21, "s-21")]]
        for m in msgs:
            out.send_multipart(m)
        _recv_until(ing, sink, 1)
        assert ing.sock.type == (zmq.PULL if socket == "pull" else zmq.SUB)
    finally:
        ing.stop()
        ing.join(5)
        out.close(linger=0)
    assert [f.header.seq for f in sink.frames] == list(range(5))
    for f, ref in zip(sink.frames, data, strict=True):
        np.testing.assert_array_equal(f.data, ref)
    assert sink.series[0].header.n_frames == 5 and sink.series[-1].header.n_frames == 5


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_raising_frame_handler_is_counted_and_reception_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A bug downstream used to end the DECTRIS receive thread: now it is counted and logged."""
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.PUSH)
    out.sndtimeo = 10_000
    port = out.bind_to_random_port("tcp://127.0.0.1")
    got: list[int] = []

    def on_frame(f: Frame) -> None:
        if f.header.seq % 2 == 0:
            raise RuntimeError("downstream bug")
        got.append(f.header.seq)

    ing, sink = receiver("dectris-stream-v1", f"tcp://127.0.0.1:{port}", "pull", on_frame)
    ing.start()
    try:
        with caplog.at_level(logging.ERROR, logger="sbd_stream.sources.receiver"):
            for m in v1_series(frames(6, 5), 31):
                out.send_multipart(m)
            _recv_until(ing, sink, 1)
        assert ing._thread is not None and ing._thread.is_alive()
    finally:
        ing.stop()
        ing.join(5)
        out.close(linger=0)
    assert got == [1, 3, 5]
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "internal_error"}) == 3
    end = sink.series[-1]  # the state machine went on past every failure: all six frames counted
    assert end.topic == b"series_end" and end.header.n_frames == 6
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert len(failures) == 3 and all("downstream bug" in str(r.exc_info[1]) for r in failures)  # type: ignore[index]


def test_a_raising_series_handler_on_timeout_is_counted() -> None:
    """Timeouts fire from the receiver's tick, which is behind the same guard as received messages."""

    def on_series(_m: SeriesMessage) -> None:
        raise RuntimeError("downstream bug")

    inp = {"dialect": "dectris-stream-v2", "series_timeout_s": 1.0}
    settings = IngestSettings.model_validate({"endpoint": "tcp://127.0.0.1:*", "mode": "bind", "input": inp})
    got: list[Frame] = []
    ing = open_receiver(settings, Metrics(), got.append, on_series)
    try:
        ing.dispatch([v2_image(frames(1)[0], 5, "u", 0)])  # joins series 5: its start raises
        assert len(got) == 0  # the join's start failed first, so this frame never got through
        ing.dispatch([v2_image(frames(1)[0], 5, "u", 1)])
        assert [f.header.seq for f in got] == [1]
        ing.tick(time.monotonic() + 2.0)  # closes series 5: its end raises too
    finally:
        ing.close()
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "internal_error"}) == 2
    assert ing.metrics.value("sbd_dectris_series_timeouts_total") == 1


def test_cli_flags_and_toml_fill_the_dectris_input(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from sbd_stream.cli import app
    from sbd_stream.cli.options import ingest_input as _ingest_input
    from sbd_stream.cli.options import service_settings as _service_settings

    s = _service_settings(None, {"ingest": {"input": _ingest_input("dectris-stream-v2", "sub", 3.0)}})
    assert s.ingest.input == DectrisInput.model_validate(  # type: ignore[attr-defined]
        {"dialect": "dectris-stream-v2", "socket_type": "sub", "series_timeout_s": 3.0}
    )
    toml = tmp_path / "service.toml"
    toml.write_text('[ingest.input]\ndialect = "dectris-stream-v1"\nsocket_type = "sub"\n')
    s = _service_settings(toml, {"ingest": {"input": _ingest_input(None, None, 2.5)}})
    inp = s.ingest.input  # type: ignore[attr-defined]
    assert isinstance(inp, DectrisInput)
    assert (inp.dialect, inp.socket_type, inp.series_timeout_s) == ("dectris-stream-v1", "sub", 2.5)
    with pytest.raises(typer.Exit):  # a DECTRIS-only flag on wire format v1 is refused, not ignored
        _service_settings(None, {"ingest": {"input": _ingest_input(None, None, 3.0)}})
    # the socket type alone is the default wire-v1 input's (docs/scale-out-nodes.md: PULL from PUSH)
    s = _service_settings(None, {"ingest": {"input": _ingest_input(None, "pull", None)}})
    assert (s.ingest.input.dialect, s.ingest.input.socket_type) == ("wire-v1", "pull")
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert all(flag in out for flag in ("--dialect", "--socket-type", "--series-timeout"))


def test_a_configuration_holding_infinity_is_refused_at_the_edge_and_its_frames_still_flow() -> None:
    """``1e400`` is valid JSON that parses as inf: no output header could carry it."""
    ing, sink = make()
    header, config = v1_header(41, {"nimages": 1, "ntrigger": 2})
    ing.handle([header, config[:-1] + b',"gain":1e400}'])
    for i, f in enumerate(frames(2)):
        ing.handle(v1_frame(f, 41, i))
    ing.handle(v1_end(41))
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "bad_meta"}) == 1
    assert [s.topic for s in sink.series] == [b"series_end"]  # the start never reached the pipeline
    assert [f.header.seq for f in sink.frames] == [0, 1]


def test_a_series_paused_past_the_timeout_resumes_and_loses_no_frame() -> None:
    """An externally triggered series (nimages 2 x ntrigger 3) whose next trigger comes after
    ``series_timeout_s``: the timeout closes it, and its next frame reopens it (``meta.resumed``) with its
    numbering kept; the frames were dropped as stale before, raw counts included."""
    ing, sink = make()
    header, config = v1_header(42, {"nimages": 2, "ntrigger": 3})
    ing.handle([header, config])
    data = frames(6)
    for i in range(2):
        ing.handle(v1_frame(data[i], 42, i))
    assert ing.check_timeout(time.monotonic() + 60.0)  # the trigger is late
    for i in range(2, 6):
        ing.handle(v1_frame(data[i], 42, i))
    ing.handle(v1_end(42))
    assert [f.header.seq for f in sink.frames] == list(range(6))
    kinds = [(s.topic, s.header.meta.get("end_reason"), s.header.meta.get("resumed")) for s in sink.series]
    assert kinds == [
        (b"series_start", None, None),
        (b"series_end", "timeout", None),
        (b"series_start", None, True),
        (b"series_end", "series_end", None),
    ]
    assert sink.series[-1].header.n_frames == 6 and sink.series[2].header.n_frames == 6
    assert val(ing, "sbd_dectris_series_resumed_total") == 1
    assert val(ing, "sbd_dectris_stale_messages_total") == 0
    assert val(ing, "sbd_frames_missing_total") == 0 and val(ing, "sbd_sequence_gaps_total") == 0
    # a series another one opened after stays stale: its late frame is not resumed
    ing.handle(v1_header(43, {"nimages": 1, "ntrigger": 1}))
    ing.handle(v1_frame(data[0], 42, 6))
    assert val(ing, "sbd_dectris_stale_messages_total") == 1 and len(sink.frames) == 6


def test_a_v2_start_holding_infinity_is_refused_as_bad_meta_like_v1() -> None:
    """``count_time = inf`` in a stream v2 start: counted as ``bad_meta`` and no series_start reaches
    the pipeline, as for a v1 configuration; its frames still flow. It was silently dropped from the
    metadata before."""
    import cbor2

    from sbd_stream.sources.dectris.messages import SELF_DESCRIBED_CBOR

    ing, sink = make("dectris-stream-v2")
    start = {"type": "start", "series_id": 3, "series_unique_id": "u3", "number_of_images": 1}
    ing.handle([SELF_DESCRIBED_CBOR + cbor2.dumps({**start, "count_time": float("inf")})])
    ing.handle([v2_image(frames(1)[0], 3, "u3", 0)])
    ing.handle([v2_end(3, "u3")])
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "bad_meta"}) == 1
    assert [s.topic for s in sink.series] == [b"series_end"] and len(sink.frames) == 1
