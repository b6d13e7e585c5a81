"""`sbd-stream export`: a stop signal whose raise Python swallowed still stops it (session 35).

A signal handler's raise lands in whatever frame runs when the signal arrives; in a weakref callback or a
``__del__`` (h5py drops objects all the time) Python prints "Exception ignored in ..." and drops it, and
the export ran on to its end and wrote its output after a SIGTERM. ``cli.app.stop_signals_unwind`` now
records the signal too (``sbd_stream.stop_pending``) and the frame loop checks before each frame. Here the
signal is raised inside a real weakref callback in the main thread, during a real export of a real
recording.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers_signals import signal_inside_a_weakref_callback
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration


def _record(directory: Path, n: int = 6) -> Path:
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=directory), Metrics(), sampling=sampling)
    for q in range(n):
        frame = np.random.default_rng(q).poisson(0.45, (20, 12)).astype(np.uint16)
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, frame))
    rec.close_all()
    return directory / "acq.nxs"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("to", ["npy", "tiff"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_swallowed_stop_ends_the_export_as_a_stop_does(
    tmp_path: Path, to: str, signame: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sbd_stream.sinks.export as export_module

    rec = _record(tmp_path)
    sig = getattr(signal, signame)
    frames = export_module._frames
    read: list[int] = []

    def swallowing(*args, **kwargs) -> Iterator[np.ndarray]:  # the real frames; the stop lost at frame 1
        for i, frame in enumerate(frames(*args, **kwargs)):
            read.append(i)
            if i == 1:
                signal_inside_a_weakref_callback(sig)
            yield frame

    monkeypatch.setattr(export_module, "_frames", swallowing)
    swallowed: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_value))
    # a suite run under nohup or as `cmd &` inherits SIGHUP / SIGINT ignored (export rightly leaves them)
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        out = tmp_path / f"x.{to}"
        res = CliRunner().invoke(app, ["export", str(rec), "--to", to, "--kind", "raw", "--out", str(out)])
        after = signal.getsignal(sig)
    finally:
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGINT, sigint)
    assert len(swallowed) == 1  # the case: the handler's raise was dropped ("Exception ignored in ...")
    assert res.exit_code == 128 + sig, res.output  # before: 0, all six frames written after the stop
    assert f"{signame}: export stopped; nothing was written" in res.output
    assert read == [0, 1]  # stopped before the next frame
    assert not out.exists() and not list(tmp_path.glob(".x.*"))  # no output, no temporary file
    assert after == (signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
