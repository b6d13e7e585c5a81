"""Shared fixtures: tiny real engines (random weights, real files, real ONNX) made once per session.

Also the session-level process check (tests/leakcheck.py): after the suite, no process started by a
test may still run; a leftover is killed, named, and fails the run.
"""

from __future__ import annotations

import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import zmq

# With CI=true a skip for something .ci/run installs fails instead (tests/ci_require.py)
from ci_require import (  # noqa: F401
    ci_provided,
    pytest_make_collect_report,
    pytest_runtest_makereport,
    require_module,
    require_program,
)

# The session fails if a test leaves a process running (e.g. a simulator's child): tests/leakcheck.py
from leakcheck import pytest_sessionfinish, pytest_sessionstart  # noqa: F401

from sbd_stream.compute.model import UNet
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.config import ServiceSettings, load_settings
from sbd_stream.engines.card import EngineCard, TilingDefaults, write_engine
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.protocol import encode_frame
from sbd_stream.service.demo import PROBE_ACQ, Collector, await_subscriber, handshake

# Readiness, never a sleep, before exact counts: ``handshake`` probes a PUB -> SUB path until it is open
# and no probe is in flight any more; ``await_subscriber`` does it from a service's publisher to a
# ``Collector``; ``probe_through_service`` sends probe frames through a whole service (input to output).
__all__ = [
    "PROBE_ACQ",
    "await_subscriber",
    "ci_provided",
    "handshake",
    "probe_through_service",
    "require_module",
    "require_program",
    "service_metric",
]

if TYPE_CHECKING:
    from training.sim.dataset import TaskResult


def make_tiny_engine(
    path: Path,
    scales: int = 2,
    channels: int = 4,
    tile: int = 64,
    margin: int = 8,
    overlap: int = 8,
    pixel_size_A: float | None = None,
    dose_e_per_A2: float | None = None,
) -> Path:
    """Write a real engine directory with a small random UNet whose output tracks its input.

    BatchNorm running statistics are randomised too, so eval-mode BN is a non-trivial affine map and
    exactness tests can't pass by accident.
    """
    torch.manual_seed(1234)
    model = UNet(scales=scales, channels=channels)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    card = EngineCard(
        name=path.name,
        scales=scales,
        channels=channels,
        tiling=TilingDefaults(tile=tile, margin=margin, overlap=overlap),
        training_data={"description": "untrained random weights for tests"},
        pixel_size_A=pixel_size_A,
        dose_e_per_A2=dose_e_per_A2,
        dose_range=(0.5, 2.0) if dose_e_per_A2 else (1.0, 1.0),
        normalisation=Normalisation(dose=dose_e_per_A2 * pixel_size_A**2)
        if dose_e_per_A2 and pixel_size_A
        else Normalisation(),
    )
    write_engine(path, model.eval(), card)
    return path


@pytest.fixture(scope="session")
def binning_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny engine that works at 0.24 A and 125 e/A^2: the paper's 0.060 A detector bins 4 x 4."""
    return make_tiny_engine(
        tmp_path_factory.mktemp("engines") / "tiny-unet2-0.24A", pixel_size_A=0.24, dose_e_per_A2=125.0
    )


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_engine(tmp_path_factory.mktemp("engines") / "tiny-unet2")


def make_settings(tmp_path: Path, ingest_endpoint: str, **denoise) -> ServiceSettings:
    """The tiny test engine states no working pixel: it runs at the detector's, here 0.3 A."""
    return load_settings(
        overrides={
            "detector": {"pixel_size_A": 0.3, "counts_per_px": 0.45},
            "ingest": {"endpoint": ingest_endpoint, "mode": "connect"},
            # every message counted: a PUB socket drops silently at a slow reader's high-water mark (16 by
            # default), which a loaded CI machine reaches (series_end lost once in 12 frames + maps)
            "publish": {"endpoint": "tcp://127.0.0.1:*", "sndhwm": 1000},
            "record": {"directory": str(tmp_path / "rec"), "min_free_bytes": 0},
            # one lane (every frame, in order) unless a test asks for the live lane (``policy=latest``)
            "denoise": {"batch_frames": 4, "batch_timeout_ms": 2.0, "policy": "lossless", **denoise},
            "metrics": {"port": 0},
        }
    )


def fake_sim_task(key: str, sid: str, n: int, shape=(8, 6), k_cols: int = 3) -> TaskResult:
    """A small simulated-dataset task with random clean images and column tables (no abTEM)."""
    from training.sim.dataset import ImageRecord, TaskResult

    # zlib, not hash(): str hashes change with PYTHONHASHSEED, so every run would draw other images
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    images = []
    for j in range(n):
        meta = dict(
            structure_id=sid,
            task_key=key,
            particle_class="PtNp3",
            defect_class="D0",
            contrast_class=1,
            thickness_nm=3.0,
            tilt_x_deg=0.0,
            tilt_y_deg=1.0,
            defocus_nm=float(j),
            pixel_size_A=0.15,
            dose=0.45,
        )
        cols = dict(
            xy=rng.uniform(0, 5, (k_cols + j, 2)),
            is_surface=np.arange(k_cols + j) % 2 == 0,
            contrast=np.full(k_cols + j, j % 3),
            species=np.full(k_cols + j, 78),
            n_atoms=np.full(k_cols + j, 5),
        )
        images.append(
            ImageRecord(clean=rng.uniform(0.5, 1.5, shape).astype(np.float32), meta=meta, columns=cols)
        )
    return TaskResult(key=key, structure={"structure_id": sid, "seed": 1}, images=images)


@pytest.fixture(scope="module")
def denoiser(tiny_engine_dir: Path) -> Denoiser:
    """The tiny engine behind ONNX Runtime, loaded once per module (most service tests use it)."""
    return Denoiser.load(engine="onnxruntime", engine_dir=tiny_engine_dir)


_PORTS_GIVEN: set[int] = set()  # never the same port twice in one run: its last user's TIME_WAIT may hold it


def _ephemeral_ports() -> range:
    """The kernel's ephemeral range (it hands these to ``bind(0)`` and to every outgoing connection's
    source port); where it cannot be read, 32768-65535 covers Linux's default and the IANA range."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 65535
    return range(lo, hi + 1)


def _port_pool() -> range:
    """Where ``free_port`` picks from: between the ports services are commonly configured on (up to ~10000:
    5432, 8080, 9090, 9105 ...) and the ephemeral range, 20000-32767 by default; above the ephemeral
    range where a tuned kernel starts it too low to leave 4000 ports below."""
    eph = _ephemeral_ports()
    if eph.start - 20000 >= 4000:
        return range(20000, eph.start)
    if 65536 - eph.stop >= 4000:
        return range(eph.stop, 65536)
    return range(0)


def _bindable(port: int) -> bool:
    """Nobody holds ``port``: a bind on the IPv4 (and IPv6) wildcard without SO_REUSEADDR fails while any
    socket holds it on any address, listening, connected or in TIME_WAIT, so the check is stricter than
    the bind of a ZeroMQ or HTTP server (which set SO_REUSEADDR) that follows."""
    import socket

    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(ctx: zmq.Context | None = None) -> int:
    """A TCP port on 127.0.0.1 (and ::1) free a moment ago, for a process the test starts to bind.

    Between this check and that bind another process may take the port. A port from ``bind(0)`` was
    the likeliest to go: it lies in the kernel's ephemeral range, which every outgoing connection on the
    machine (this suite's own ZeroMQ and HTTP clients, other CI jobs) draws source ports from. So the
    port is drawn at random from ``_port_pool``, outside that range, where only a program binding that
    very number could take it; it is checked with plain sockets, whose close is synchronous (a ZeroMQ
    socket closes in its I/O thread after ``close`` returns: audit 26, 2 of 20 binds failed with
    "Address already in use"), and never handed out twice in one run. A parallel run (xdist, a second
    job on the runner) draws from 12768 ports at random, so two runs meet on one port only by chance.
    Where a component can bind port 0 itself and report the port (``--metrics-port 0``, ``tcp://...:*``
    with LAST_ENDPOINT, ``dask scheduler --port 0 --scheduler-file``), that is better still.
    ``ctx`` is accepted for the callers that pass one, and not used."""
    import random
    import socket

    pool = _port_pool()
    rng = random.SystemRandom()  # not the suite's seeded ``random``: parallel runs must draw differently
    for _ in range(200 if pool else 0):
        port = rng.choice(pool)
        if port not in _PORTS_GIVEN and _bindable(port):
            _PORTS_GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no pool here: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hup_default() -> None:
    """In a child process (``preexec_fn``): SIGHUP at its default. A suite run under ``nohup`` (or a CI
    runner that ignores SIGHUP) hands the ignore down, and a command then rightly keeps ignoring it."""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def wait_until(pred: Callable[[], object], timeout: float = 20.0) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed; its last truth value."""
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.02)
    return ok


def probe_through_service(
    send_parts: Callable[[list], object],
    col: Collector,
    shape: tuple[int, int] = (64, 64),
    timeout: float = 30.0,
) -> int:
    """``handshake`` through a whole service: probe frames of ``PROBE_ACQ`` sent with ``send_parts`` (a
    PUB the service subscribes to) until ``col`` receives one denoised, then the last one sent. Returns the
    probes sent; the service's counters then hold every probe it will ever receive (take baselines now)."""
    arr = np.zeros(shape, np.uint16)
    return handshake(
        lambda i: send_parts(encode_frame(arr, PROBE_ACQ, i, 0.0)), lambda: col.probe_seen, timeout
    )


def service_metric(port: int, name: str) -> float | None:
    """One sample of a running service's /metrics (a service in another process); None if unreachable."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def stream_through(pipe, emu, ctx):
    """Start the service and a subscriber, send the emulator's series, stop everything; the subscriber.

    The emulator (XPUB) waits for the service's subscription; the subscriber is known to receive the
    service's output (``await_subscriber``) before the emulator starts, so counts are exact from frame 0.
    """
    pipe.start()
    assert pipe.publisher is not None
    col = Collector(pipe.publisher.endpoint, context=ctx).start()
    try:
        await_subscriber(pipe.publisher, col)
        emu.start()
        assert col.series_end.wait(60), "series_end never reached the subscriber"
    finally:
        emu.close()
        pipe.stop()
        col.close()
    return col


def denoise_cli(inp: Path, out: Path, engine_dir: Path, *extra: str):
    """``sbd-stream denoise`` in-process on a test engine: torch, one orientation, no Dask, so a file's
    way through the readers is what is tested (tests/e2e/test_denoise_inputs.py, test_foreign_stacks.py)."""
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    args = ["denoise", str(inp), str(out), "--model", str(engine_dir), "--engine", "torch"]
    return CliRunner().invoke(app, [*args, "--orientations", "1", "--scheduler", "none", *extra])


def denoise_summary(res) -> dict:
    """The JSON summary a successful ``denoise_cli`` printed."""
    import json

    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{") :])


def stop_command(proc) -> str:
    """SIGTERM a CLI subprocess and return its stdout (the JSON summary); one that does not stop within
    20 s is killed and the test fails."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        stdout, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return stdout


@pytest.fixture()
def viewer_port() -> Iterator[int]:
    """Port of a real viewer on 127.0.0.1 (port 0: a free one), fed by an idle PUB socket."""
    from sbd_stream.config import ViewerSettings
    from sbd_stream.sinks.viewer.server import Viewer

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    v = Viewer(ViewerSettings(port=0), output_endpoint=pub.getsockopt_string(zmq.LAST_ENDPOINT)).start()
    try:
        yield int(v.url.rstrip("/").rsplit(":", 1)[1])
    finally:
        v.close()
        pub.close(0)


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@pytest.fixture(autouse=True)
def _stop_signal_handlers_restored() -> Iterator[None]:
    """Each test leaves SIGINT / SIGTERM / SIGHUP as it found them. Why: a command run in-process that
    took a stop signal keeps its handler on purpose (``cli.app.on_signals``: a second signal during the
    drain is ignored; the process then exits), and ``serve`` / ``merge`` never hand theirs back; in one
    process of the whole suite a later test found ``on_signals``' handler where it expected the default
    (session 35's first CI run: two signal tests failed only in the suite's order)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    yield
    for s, handler in before.items():
        if handler is not None and signal.getsignal(s) is not handler:
            signal.signal(s, handler)


@pytest.fixture
def swallowed(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What reached Python's "Exception ignored in ..." hook during the test (kept out of stderr and
    pytest's warnings): a stop handler's raise that Python dropped (``helpers_signals``)."""
    import sys

    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


@pytest.fixture
def default_stop_signals() -> None:
    """SIGINT / SIGTERM at their defaults for the test (``helpers_signals``); put back after by
    ``_stop_signal_handlers_restored``."""
    from helpers_signals import stop_signals_at_their_defaults

    stop_signals_at_their_defaults()
