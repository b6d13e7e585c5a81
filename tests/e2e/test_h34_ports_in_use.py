"""A port another program holds is found before the engine loads: one line, exit 2, nothing left behind.

Why (audit h34): `serve`, `demo` and `replay --live --publish` bound their ZeroMQ endpoints, `/metrics`
and the viewer only once the engine had loaded (seconds of torch / ONNX Runtime import and load), after
the banner had announced "serving: ..."; `merge` named no flag for a busy `--output`
("merge: Address already in use (addr='tcp://...')"). Now every local port a command binds is bound
first and held until the service takes it over (``cli.service_start.holding_ports``). Real processes,
real listening sockets on 127.0.0.1; "the engine did not load" is read from the engine's own log line
(``engine ... warmed up``, at ``-v``), shown to appear when it does load by the control test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # a regression must not hang the suite

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ENGINE_LOADED = "warmed up"  # engines/__init__.py logs "engine ID warmed up in N ms" (DEBUG) once loaded
HINT = "another sbd-stream? choose another port"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port another program holds (listening) for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real recording (4 raw 64x64 frames) for `replay`."""
    folder = tmp_path_factory.mktemp("rec")
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=folder, min_free_bytes=0), Metrics(), sampling=sampling)
    for q in range(4):
        rec.write(RecordItem("raw", "r", q, 0.0, np.full((64, 64), q, np.uint16)))
    rec.close_all()
    return folder / "r.nxs"


def _tcp(port: int | None = None) -> str:
    return f"tcp://127.0.0.1:{free_port() if port is None else port}"


def _processes_with(marker: str) -> list[str]:
    """Processes (a child left behind: the demo's emulator) whose environment carries ``marker``."""
    found = []
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours to read
            continue
    return found


def _run(args: list[str], tmp_path: Path) -> tuple[int, str, list[str], list[Path]]:
    """(exit status, stdout + stderr, processes left with its marker, files left in its TMPDIR)."""
    marker = uuid.uuid4().hex
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "H34_PORTS_MARKER": marker}
    p = subprocess.run([SBD, *args, "-v"], capture_output=True, text=True, timeout=240, env=env)
    return p.returncode, p.stdout + p.stderr, _processes_with(marker), sorted(tmp.rglob("sbd-*"))


def _serve(record_dir: Path, *args: str) -> list[str]:
    return ["serve", "--record-dir", str(record_dir), *args]


Case = Callable[[int, Path, Path], tuple[list[str], str]]
CASES: dict[str, Case] = {  # (arguments, the error's start) for a busy port, a record folder, a recording
    "serve --output": lambda b, d, r: (
        _serve(d, "--input", _tcp(), "--output", _tcp(b), "--metrics-port", "0"),
        f"--output {_tcp(b)}: Address already in use ({HINT})",
    ),
    "serve --bind-input": lambda b, d, r: (
        _serve(d, "--bind-input", "--input", _tcp(b), "--output", _tcp(), "--metrics-port", "0"),
        f"--input {_tcp(b)}: Address already in use ({HINT})",
    ),
    "serve --metrics-port": lambda b, d, r: (
        _serve(d, "--input", _tcp(), "--output", _tcp(), "--metrics-port", str(b)),
        f"--metrics-port 127.0.0.1:{b}: Address already in use ({HINT}, or 0 for any free port)",
    ),
    "serve --viewer-port": lambda b, d, r: (
        _serve(
            d,
            "--input",
            _tcp(),
            "--output",
            _tcp(),
            "--metrics-port",
            "0",
            "--viewer",
            "--viewer-port",
            str(b),
        ),
        f"--viewer-port 127.0.0.1:{b}: Address already in use ({HINT}, or 0 for any free port)",
    ),
    "demo --viewer-port": lambda b, d, r: (
        ["demo", "--frames", "20", "--shape", "128x128", "--viewer", "--viewer-port", str(b)],
        f"--viewer-port 127.0.0.1:{b}: Address already in use ({HINT}, or 0 for any free port)",
    ),
    "replay --live --publish --output": lambda b, d, r: (
        ["replay", str(r), "--live", "--publish", "--wait", "0", "--record-dir", str(d), "--output", _tcp(b)],
        f"--output {_tcp(b)}: Address already in use ({HINT})",
    ),
    "merge --output": lambda b, d, r: (
        ["merge", "--input", _tcp(), "--output", _tcp(b)],
        f"--output {_tcp(b)}: Address already in use ({HINT})",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_port_in_use_is_one_line_before_the_engine_loads(
    case: str, busy_port: int, tmp_path: Path, recording: Path
) -> None:
    """One ``error:`` line naming the flag and the port, exit 2, no traceback; the engine never loaded,
    no banner, no recording file, no temporary folder and no emulator child left."""
    record_dir = tmp_path / "rec"
    args, expected = CASES[case](busy_port, record_dir, recording)
    code, out, left, tmp_left = _run(args, tmp_path)
    assert code == 2, out
    assert ENGINE_LOADED not in out and "serving:" not in out, out  # refused before the load, not after
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {expected}"] and "Traceback" not in out and "addr=" not in out, out
    assert left == [] and tmp_left == [], (left, tmp_left)
    assert not list(record_dir.rglob("*.nxs*")), list(record_dir.rglob("*"))  # no file, no .partial


def test_the_engine_load_says_so_at_verbose(tmp_path: Path, recording: Path) -> None:
    """The control: a command that does load the engine logs ``ENGINE_LOADED`` at ``-v``, so its
    absence above means the engine was not loaded (not that the line is gone)."""
    code, out, left, _ = _run(["replay", str(recording), "--live"], tmp_path)
    assert code == 0 and ENGINE_LOADED in out, out
    assert left == []


def test_two_of_its_own_flags_on_one_port_are_both_named_as_flags(tmp_path: Path) -> None:
    """``--metrics-port P --viewer --viewer-port P``: the clash names the other port by the flag the user
    typed (it said "the same port as metrics.port", a setting the command line never showed; docs audit
    h34)."""
    port = free_port()
    args = [*_serve(tmp_path / "rec", "--input", _tcp(), "--output", _tcp()), "--metrics-port", str(port)]
    code, out, left, _ = _run([*args, "--viewer", "--viewer-port", str(port)], tmp_path)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and left == [], out
    assert errors[0].startswith(f"error: --viewer-port 127.0.0.1:{port}: "), out
    assert errors[0].endswith("(the same port as --metrics-port: give each its own)"), out
