"""``run_demo`` (the library entry of `sbd-stream demo`, used by benchmarks/bench_pipeline.py) and Ctrl-C.

Why: it swallowed KeyboardInterrupt, and one that came during the subscriber handshake, before the
metrics were bound, became ``UnboundLocalError: 'm'``. A KeyboardInterrupt now ends the emulator's
child, the service and the subscriber and then propagates, wherever it lands. Real emulator process,
real service and sockets; the Ctrl-C is a real SIGINT raised in the main thread at the chosen moment.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import make_settings
from helpers_procs import child_processes

import sbd_stream.service.demo as demo
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.sources.emulator_settings import EmulatorSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT as KeyboardInterrupt, as in a terminal (a background job starts with SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _emulator_children() -> list[int]:
    """Emulator child processes of this process still alive (or not reaped)."""
    return [pid for pid, cmd in child_processes(os.getpid()) if b"emulator_process" in cmd]


def _sbd_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sbd-") and t.is_alive()}


def _all_ended(before: set[threading.Thread]) -> None:
    """No emulator child left; the service's and the subscriber's threads end (joined or ending)."""
    assert not _emulator_children()
    end = time.monotonic() + 30
    while _sbd_threads() - before and time.monotonic() < end:
        time.sleep(0.05)
    assert not _sbd_threads() - before, _sbd_threads() - before


def _settings(tmp_path: Path):
    s = make_settings(tmp_path, "tcp://127.0.0.1:1")
    s.record.enabled = False
    return s


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_ctrl_c_during_the_subscriber_handshake_propagates_as_keyboardinterrupt(
    tmp_path: Path, denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = demo.await_subscriber

    def handshake_then_ctrl_c(*args, **kwargs) -> int:
        sent = real(*args, **kwargs)  # the real handshake through the real publisher
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, delivered now
        return sent

    monkeypatch.setattr(demo, "await_subscriber", handshake_then_ctrl_c)
    cfg = EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(64, 64), n_frames=4, rate_hz=100)
    before = _sbd_threads()
    with ctrl_c_raises(), pytest.raises(KeyboardInterrupt):  # was UnboundLocalError: 'm'
        demo.run_demo(_settings(tmp_path), denoiser, cfg)
    _all_ended(before)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_ctrl_c_during_the_acquisition_propagates_after_everything_ended(
    tmp_path: Path, denoiser: Denoiser
) -> None:
    """It used to be swallowed (a summary returned, the caller's Ctrl-C lost)."""
    pressed = threading.Event()

    def status(line: str) -> None:  # called from the acquisition loop, in the main thread
        if not pressed.is_set():
            pressed.set()
            signal.raise_signal(signal.SIGINT)

    cfg = EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(64, 64), n_frames=400, rate_hz=20)
    before = _sbd_threads()
    with ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
        demo.run_demo(_settings(tmp_path), denoiser, cfg, status=status, status_every_s=0.0)
    assert pressed.is_set()
    _all_ended(before)
