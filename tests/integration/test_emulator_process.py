"""The emulator in a child process (the demo's detector): starts, waits for ``go``, sends, reports."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from sbd_stream.protocol import FrameMessage, SeriesMessage, decode
from sbd_stream.sources.emulator_process import EmulatorExited, EmulatorProcess
from sbd_stream.sources.emulator_settings import EmulatorSettings

pytestmark = pytest.mark.integration  # real child processes and sockets


@pytest.mark.timeout(120)
def test_child_emulator_sends_its_series_after_go_and_reports_the_count() -> None:
    cfg = EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(32, 32), n_frames=12, rate_hz=0)
    emu = EmulatorProcess(cfg)
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        assert emu.endpoint.startswith("tcp://127.0.0.1:") and not emu.endpoint.endswith("*")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(emu.endpoint)  # the child's XPUB waits for this subscription before it sends
        assert not emu.done()
        emu.go()
        seqs, end = [], None
        while end is None:
            assert sub.poll(30_000), "nothing from the child emulator"
            msg = decode(sub.recv_multipart())
            if isinstance(msg, FrameMessage):
                seqs.append(msg.header.seq)
            elif isinstance(msg, SeriesMessage) and msg.topic == b"series_end":
                end = msg
        assert seqs == list(range(12)) and end.header.acq == cfg.acq
    finally:
        sub.close(linger=0)
        emu.close()
    assert emu.done() and emu.n_sent == 12 and emu.proc.returncode == 0


def test_closing_before_go_ends_the_child() -> None:
    emu = EmulatorProcess(EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(16, 16), n_frames=5))
    emu.close()
    assert emu.proc.returncode == 0 and emu.n_sent == 0


def test_a_child_that_exits_at_start_is_reported_with_its_status_and_reason_not_as_a_timeout() -> None:
    """Settings the child refuses (here unchecked ones, as ``model_copy(update=...)`` made them) ended
    in "did not start in 120 s" a few seconds after the child had exited: now ``EmulatorExited``."""
    bad = EmulatorSettings.model_construct(**{**EmulatorSettings().model_dump(), "shape": (1, 20000)})
    with pytest.raises(EmulatorExited, match=r"exited with status 1 before it started: shape: each side"):
        EmulatorProcess(bad, start_timeout_s=600)  # not a TimeoutError: the exit is seen as it happens


def test_a_recording_the_child_cannot_read_is_named_in_the_report(tmp_path: Path) -> None:
    src = tmp_path / "nocomplete.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("raw/frames", data=np.ones((3, 16, 16), np.uint16))
    cfg = EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(16, 16), n_frames=3, source=src)
    with pytest.raises(EmulatorExited, match=r"status 1 .*RecordingError: nocomplete.h5 .*no /raw/complete"):
        EmulatorProcess(cfg, start_timeout_s=60)
