"""`sbd-stream emulate`: Ctrl-C, SIGTERM and SIGHUP end the series cleanly (session 35).

Before, Ctrl-C was Python's own raise around ``Emulator.run`` (lost where Python swallowed it in a weakref
callback or a ``__del__``, and the series never got its ``series_end``), and SIGTERM / SIGHUP killed the
process by their default action (no ``series_end``, no summary, status -15 / -1). Now the command's
signals set the emulator's stop (``cli.app.on_signals``), which it polls between frames and while it waits
for a subscriber. A real emulator process publishes to a real SUB socket on loopback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import zmq

from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START

pytestmark = pytest.mark.integration


def _defaults() -> None:
    """The child as in a terminal: a suite run under nohup or as `cmd &` passes SIGHUP / SIGINT ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _emulate(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sbd_stream", "emulate", "--shape", "32x32", "--pool", "2", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_defaults
    )


@pytest.mark.timeout(150)
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_the_series_with_its_end_and_summary(signame: str) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 60_000)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    proc = _emulate("--endpoint", f"tcp://127.0.0.1:{port}", "--connect", "--rate", "20",
                    "--frames", "100000", "--wait", "60", "--acq", "stopped")  # fmt: skip
    topics: list[bytes] = []
    try:
        while len(topics) < 4:  # series_start and three frames: well inside the run
            topics.append(bytes(sub.recv_multipart()[0]))
        proc.send_signal(getattr(signal, signame))
        while topics[-1] != TOPIC_SERIES_END:  # before: zmq.Again (SIGTERM / SIGHUP killed it; Ctrl-C raised)
            topics.append(bytes(sub.recv_multipart()[0]))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        sub.close(linger=0)
        ctx.term()
    assert proc.returncode == 0, err[-2000:]  # before: -15 / -1 for SIGTERM / SIGHUP
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["acq"] == "stopped"
    assert topics[0] == TOPIC_SERIES_START and summary["frames_sent"] == len(topics) - 2 < 100000
    assert f"{signame}: stopping" in err


@pytest.mark.timeout(150)
def test_ctrl_c_while_waiting_for_a_subscriber_ends_it_at_once() -> None:
    """Nobody subscribes: a stop during the wait ends it without the wait's warning and without a series."""
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as spare:  # a free loopback port for the emulator
        port = spare.bind_to_random_port("tcp://127.0.0.1")
        spare.unbind(f"tcp://127.0.0.1:{port}")
    proc = _emulate("--endpoint", f"tcp://127.0.0.1:{port}", "--frames", "5", "--wait", "600")
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()  # the handlers are in place before the banner
        assert banner.startswith("emulating"), banner
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=100)  # before the stop-aware wait: all of --wait 600
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["frames_sent"] == 0
    assert "no subscriber after" not in err  # not "publishing anyway" after a stop
