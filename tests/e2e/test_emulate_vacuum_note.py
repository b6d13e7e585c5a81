"""`sbd-stream emulate --source DATASET.h5` warns once when its frames hold only vacuum, as `demo` does.

Found: ``demo --source DATASET`` warned that its frames held no specimen (``FrameSource.note``), but
``emulate --source DATASET``, which plays the same frames to a real service, streamed pure vacuum
without a word. Each case runs the real console entry in a child process, publishing to a real SUB
socket on loopback: the warning is one line on stderr (stdout keeps only the JSON summary), and a
dataset with a specimen draws none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from conftest import hup_default

from sbd_stream.protocol import FrameMessage, decode

pytestmark = pytest.mark.integration  # real processes, sockets and files

CLI = [sys.executable, "-m", "sbd_stream"]
FRAMES = 3


def _dataset(path: Path, specimen: bool) -> Path:
    """A simulated dataset (``/images``, clean images at the vacuum level 1.0), with or without a specimen."""
    images = np.ones((2, 64, 64), np.float32)
    if specimen:
        images[:, 16:48, 16:48] = 1.5  # a quarter of the pixels depart from the vacuum by 50 %
    with h5py.File(path, "w") as f:
        f["images"] = images
        f.attrs["pixel_size_A"] = 0.060
    return path


def _emulate(source: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``emulate --source SOURCE`` into a bound SUB socket: (the process, frames received)."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.linger = 0
    sub.bind("tcp://127.0.0.1:*")
    got: list[object] = []
    done = threading.Event()

    def receive() -> None:
        end = time.monotonic() + 120  # a generous deadline; the loop ends at series_end
        while time.monotonic() < end and not done.is_set():
            if sub.poll(100):
                msg = decode(sub.recv_multipart())
                got.append(msg)
                if getattr(msg, "topic", None) == b"series_end":
                    return

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    try:
        args = ["emulate", "--source", str(source), "--shape", "64x64", "--pixel-size", "0.06"]
        args += ["--endpoint", sub.getsockopt_string(zmq.LAST_ENDPOINT), "--connect"]
        args += ["--rate", "0", "--frames", str(FRAMES)]
        proc = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=150, preexec_fn=hup_default
        )
        t.join(120)
    finally:
        done.set()
        t.join(5)
        sub.close()
    return proc, sum(isinstance(m, FrameMessage) for m in got)


@pytest.mark.timeout(300)
def test_frames_of_only_vacuum_draw_one_warning_on_stderr(tmp_path: Path) -> None:
    proc, received = _emulate(_dataset(tmp_path / "vacuum.h5", specimen=False))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [ln for ln in proc.stderr.splitlines() if "only vacuum" in ln]
    assert len(said) == 1, proc.stderr[-3000:]
    assert "WARNING" in said[0] and "vacuum.h5: the 64x64 frames hold (almost) no specimen" in said[0]
    assert "give a larger --shape or a dataset with a specimen" in said[0]
    assert "specimen" not in proc.stdout  # stdout carries the summary alone
    assert json.loads(proc.stdout) == {"acq": json.loads(proc.stdout)["acq"], "frames_sent": FRAMES,
                                       "source": "simulated"}  # fmt: skip
    assert received == FRAMES  # the warning does not stop the stream


@pytest.mark.timeout(300)
def test_frames_with_a_specimen_draw_no_warning(tmp_path: Path) -> None:
    proc, received = _emulate(_dataset(tmp_path / "specimen.h5", specimen=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "only vacuum" not in proc.stderr and "no specimen" not in proc.stderr, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["frames_sent"] == FRAMES and received == FRAMES
