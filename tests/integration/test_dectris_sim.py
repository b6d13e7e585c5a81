"""Against a sender nobody here wrote: LiberTEM-live's DECTRIS simulator (``libertem-live-dectris-sim``).

The simulator (its Rust core is libertem-dectris) replays a recorded stream v1 series over a real
PUSH socket after an ``arm`` through its SIMPLON-like REST API. We give it a series of bitshuffle-LZ4
frames, run the full service on it (DECTRIS ingest -> denoiser -> recorder), and check that every
frame is received, denoised and recorded, with the detector configuration kept; then restart the
simulator on the same port and check that the still-running service picks the new series up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import ci_provided

from sbd_stream.config import load_settings
from sbd_stream.formats.recording import open_recording
from sbd_stream.service.build import build_pipeline
from sbd_stream.sources.dectris.sim import v1_series, write_sim_dump

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# the console script sits next to the interpreter when the venv is not activated
_CAND = Path(sys.executable).parent / "libertem-live-dectris-sim"
SIM = str(_CAND) if _CAND.exists() else shutil.which("libertem-live-dectris-sim")
SERIES, N, SHAPE = 34, 12, (96, 80)
RESTART = """
import sys, time, libertem_dectris
sim = libertem_dectris.DectrisSim(uri=sys.argv[1], filename=sys.argv[2], dwelltime=None, random_port=False)
sim.send_headers(); sim.send_frames(); sim.send_footer()
print("sent", flush=True)
sys.stdin.readline()  # stay up (the PUSH socket with it) until the test has seen every frame arrive
"""


class Simulator:
    """The simulator as a subprocess on free loopback ports, read back from its log."""

    def __init__(self, dump: Path, zmqport: int = 0) -> None:
        self.proc = subprocess.Popen(
            [SIM, str(dump), "--port", "0", "--zmqport", str(zmqport)],  # type: ignore[list-item]
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: close() ends its API-server child too
        )
        self.api = self.zmq = None
        self.log: list[str] = []
        end = time.monotonic() + 60
        assert self.proc.stdout is not None
        while (self.api is None or self.zmq is None) and time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            self.log.append(line)
            if m := re.search(r"API server listening on \('[^']*', (\d+)\)", line):
                self.api = int(m.group(1))
            if m := re.search(r"listening on tcp://[\d.]+:(\d+)", line):
                self.zmq = int(m.group(1))
        if self.api is None or self.zmq is None:
            self.close()
            pytest.fail("simulator did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def arm(self) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api}/detector/api/1.8.0/command/arm",
            method="PUT",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read())["sequence id"])

    def close(self) -> None:
        """Kill the simulator and its children (its REST API is a multiprocessing.Process).

        Killing only the script left that child running after every test run; the whole process
        group goes, even when the script itself has already exited.
        """
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    if SIM is None:
        pytest.skip(ci_provided("libertem-live-dectris-sim not installed (pip install 'libertem-live[sim]')"))
    rng = np.random.default_rng(8)
    frames = [rng.poisson(0.45 * (1 + (i % 3)), SHAPE).astype(np.uint16) for i in range(N)]
    dump = write_sim_dump(tmp_path_factory.mktemp("sim") / "series.dump", v1_series(frames, SERIES))
    return dump, frames


def _wait(pred, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.05)
    return ok


def test_simulated_series_received_denoised_recorded_and_resumed_after_restart(
    tmp_path: Path, series: tuple[Path, list[np.ndarray]], tiny_engine_dir: Path
) -> None:
    from sbd_stream.engines.denoiser import Denoiser

    dump, frames = series
    sim = Simulator(dump)
    settings = load_settings(
        overrides={
            "ingest": {
                "endpoint": f"tcp://127.0.0.1:{sim.zmq}",
                "input": {"dialect": "dectris-stream-v1", "socket_type": "pull", "series_timeout_s": 30},
            },
            "publish": {"enabled": False},
            "record": {"directory": str(tmp_path / "rec"), "min_free_bytes": 0, "record_llr": False},
            "denoise": {"batch_frames": 4, "batch_timeout_ms": 2.0},
            "metrics": {"enabled": False},
        }
    )
    den = Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir)
    ctx = zmq.Context.instance()
    pipe = build_pipeline(settings, den, context=ctx)
    pipe.start()
    m = pipe.metrics
    try:
        # no wait for the service to connect: the simulator's bound PUSH blocks, never drops, while it
        # has no peer, so a series armed before the PULL is connected still arrives whole
        assert sim.arm() == SERIES
        assert _wait(lambda: m.value("sbd_frames_denoised_total") >= N), "".join(sim.log[-20:])
        assert _wait(lambda: m.value("sbd_series_messages_total", {"topic": "series_end"}) >= 1)
        # The sender dies and comes back on the same port; the connected PULL re-dials by itself.
        # The CLI can't rebind a fixed --zmqport (libertem-live 0.3.0 opens the port twice), so the
        # second run drives the same Rust simulator core (libertem_dectris.DectrisSim) directly.
        port = sim.zmq
        sim.close()
        again = subprocess.Popen(
            [sys.executable, "-c", RESTART, f"tcp://127.0.0.1:{port}", str(dump)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:  # the sender exits only once the service has everything (not after a fixed sleep)
            assert _wait(lambda: m.value("sbd_frames_denoised_total") >= 2 * N, 90)
            assert _wait(lambda: m.value("sbd_series_messages_total", {"topic": "series_end"}) >= 2)
            out, err = again.communicate("done\n", timeout=60)
        finally:
            if again.poll() is None:
                again.kill()
                again.communicate()
        assert again.returncode == 0 and "sent" in out, err[-2000:]
    finally:
        sim.close()
        pipe.stop()
    assert m.value("sbd_frames_received_total") == 2 * N
    assert m.value("sbd_frames_missing_total") == 0 and m.value("sbd_dectris_stale_messages_total") == 0
    files = sorted((tmp_path / "rec").glob("dectris-34*.nxs"))
    assert len(files) == 2, files  # the repeated series id gets a second file, never an overwrite
    for path in files:
        with open_recording(path) as f:
            raw = f["raw/frames"]
            assert raw.shape == (N, *SHAPE) and raw.dtype == np.uint16
            np.testing.assert_array_equal(f["raw/seq"][:], np.arange(N))
            for i in (0, 5, N - 1):
                np.testing.assert_array_equal(raw[i], frames[i])
            assert f["denoised/frames"].shape == (N, *SHAPE)
            assert f["denoised/complete"][:].all()
            meta = json.loads(f.attrs["series_meta"])
            assert meta["dialect"] == "dectris-stream-v1" and meta["series"] == SERIES
            assert meta["config"]["ntrigger"] == N and meta["config"]["x_pixels_in_detector"] == SHAPE[1]
