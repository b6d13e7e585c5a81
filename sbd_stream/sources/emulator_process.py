"""The emulated detector in a process of its own (the demo's default).

Why: a detector is another device. Run as a thread of the service's process, the emulator's Poisson
draws, scene rendering and sends took about a quarter of the demo's CPU samples and competed for the
interpreter lock with the receiver, the recorder and the live lane, so the demo measured the emulator
as much as the service. In its own process it competes only for cores, as a detector's host would not
at all. The parent keeps what it needs to score the run without the child's memory: the truth of a
frame is deterministic (``FrameSource.truth_of_frame``), and the raw counts of the scored frames are
taken from what the service received.

A child that exits before it started (settings it refuses, a recording it cannot read) is reported as
such, ``EmulatorExited`` with its exit status and its one-line reason; it used to be taken for a
timeout ("did not start in 120 s", said after 4 s).
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import traceback
from typing import IO

from pydantic import ValidationError

from sbd_stream.sources.emulator_settings import EmulatorSettings

__all__ = ["EmulatorExited", "EmulatorProcess", "main"]

ERROR_PREFIX = "error "
"""What the child's stdout line starts with when it cannot start: the rest is its reason, one line."""


class EmulatorExited(RuntimeError):
    """The emulator's child process exited before it started: its exit status and its last error."""


def _one_line(e: Exception) -> str:
    """``e`` as one line: pydantic's errors as ``field: message``, anything else with its lines joined."""
    if isinstance(e, ValidationError):
        said = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return said.replace("Value error, ", "")
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def main() -> None:
    """The child: ``python -m sbd_stream.sources.emulator_process`` with the settings as JSON on stdin's
    first line; prints its endpoint, waits for ``go``, sends the series, prints ``done N``.

    The parent owns its lifetime: once ``go`` came, stdin closing (``EmulatorProcess.close``, or the
    parent gone, however it ended) ends the series early, with its ``series_end``; SIGINT is ignored
    (the parent starts it in a process group of its own, so a terminal's Ctrl-C does not reach it: the
    parent stops it that way; this covers a caller that signals its pid alone). An
    emulator left running after a demo stopped by SIGTERM kept publishing for the rest of its series.
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from sbd_stream.sources.emulator import Emulator

        cfg = EmulatorSettings(**json.loads(sys.stdin.readline()))
        emu = Emulator(cfg)  # its own context, ended by ``close`` once the queue is sent (``Emulator.close``)
    except Exception as e:  # the parent says so (``EmulatorExited``); the traceback stays on stderr
        traceback.print_exc()
        print(ERROR_PREFIX + _one_line(e), flush=True)
        sys.exit(1)
    try:
        print(emu.endpoint, flush=True)
        if sys.stdin.readline().strip() != "go":
            return

        def stop_at_eof() -> None:
            sys.stdin.read()  # returns once the parent closed the pipe
            emu.stop_event.set()

        threading.Thread(target=stop_at_eof, name="sbd-emulator-stdin", daemon=True).start()
        print(f"done {emu.run()}", flush=True)
    finally:
        emu.close()


def _readline(stream: IO[str], timeout: float) -> str | None:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


class EmulatorProcess:
    """``Emulator`` in a child process: ``endpoint`` once started, then ``go()``; ``done()``, ``n_sent``.

    A plain child interpreter (not ``multiprocessing``), so a caller's script needs no main guard.
    Starting raises ``TimeoutError`` only when the child is still silent after ``start_timeout_s``;
    ``EmulatorExited`` when it exited instead. The child is ended whatever interrupts the start
    (a KeyboardInterrupt included).
    """

    def __init__(self, cfg: EmulatorSettings, start_timeout_s: float = 120.0) -> None:
        self.cfg = cfg
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sbd_stream.sources.emulator_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # a group of its own: a terminal's Ctrl-C (sent to the foreground group) reaches only the
            # parent, which ends the child through its stdin. The child's own SIG_IGN came too late:
            # a Ctrl-C during its imports (torch, seconds) killed it and the demo ended in a traceback
            process_group=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self.n_sent, self._done = 0, False  # before the child can fail: close() reads them
        try:
            with contextlib.suppress(BrokenPipeError):  # a child gone already: its stdout's end says so
                self._in.write(json.dumps(cfg.model_dump(mode="json")) + "\n")
                self._in.flush()
            line = _readline(self._out, start_timeout_s)
        except BaseException:  # a Ctrl-C while it starts: no child left behind
            self.close()
            raise
        if line is None:
            self.close()
            raise TimeoutError(f"the emulator process did not start in {start_timeout_s:.0f} s")
        if not line or line.startswith(ERROR_PREFIX):  # "": end of file, the child exited
            self.close()
            rc = self.proc.returncode
            how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with status {rc}"
            said = line[len(ERROR_PREFIX) :].strip() if line else "no error line (see its output above)"
            raise EmulatorExited(f"the emulator process {how} before it started: {said}")
        self.endpoint = line.strip()

    def go(self) -> None:
        self._in.write("go\n")
        self._in.flush()

    def done(self) -> bool:
        """True once the series is sent (``n_sent`` then holds its frame count)."""
        if not self._done and not self._out.closed:
            line = _readline(self._out, 0)
            if line and line.startswith("done"):
                self.n_sent, self._done = int(line.split()[1]), True
        return self._done or self.proc.poll() is not None

    def close(self, timeout: float = 10.0) -> None:
        """End the child: before ``go`` it sends nothing; a running series ends early, with its
        ``series_end`` (the child stops when its stdin closes); terminated if it takes too long.

        Both pipes are closed at the end (a second call does nothing more): the child's stdout was
        left open and its file object reported "ResourceWarning: unclosed file" when collected
        (``sbd-stream demo`` under ``PYTHONWARNINGS=error`` or ``python -X dev``)."""
        self.done()
        with contextlib.suppress(OSError, ValueError):
            self._in.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5.0)
        try:
            if not self._done and not self._out.closed:
                line = self._out.read() if self.proc.poll() is not None else ""
                for ln in line.splitlines():
                    if ln.startswith("done"):
                        self.n_sent, self._done = int(ln.split()[1]), True
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._out.close()


if __name__ == "__main__":
    main()
