"""The emulated detector in a process of its own (the demo's default).

Why: a detector is another device. Run as a thread of the service's process, the emulator's Poisson
draws, scene rendering and sends took about a quarter of the demo's CPU samples and competed for the
interpreter lock with the receiver, the recorder and the live lane, so the demo measured the emulator
as much as the service. In its own process it competes only for cores, as a detector's host would not
at all. The parent keeps what it needs to score the run without the child's memory: the truth of a
frame is deterministic (``FrameSource.truth_of_frame``), and the raw counts of the scored frames are
taken from what the service received.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
from typing import IO

from sbd_stream.sources.emulator_settings import EmulatorSettings

__all__ = ["EmulatorProcess", "main"]


def main() -> None:
    """The child: ``python -m sbd_stream.sources.emulator_process`` with the settings as JSON on stdin's
    first line; prints its endpoint, waits for ``go``, sends the series, prints ``done N``.

    The parent owns its lifetime: once ``go`` came, stdin closing (``EmulatorProcess.close``, or the
    parent gone, however it ended) ends the series early, with its ``series_end``; SIGINT is ignored,
    since a terminal's Ctrl-C reaches the whole process group and the parent stops it that way. An
    emulator left running after a demo stopped by SIGTERM kept publishing for the rest of its series.
    """
    import signal
    import threading

    from sbd_stream.sources.emulator import Emulator

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = EmulatorSettings(**json.loads(sys.stdin.readline()))
    emu = Emulator(cfg)  # its own context, ended by ``close`` once the queue is sent (``Emulator.close``)
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
    """

    def __init__(self, cfg: EmulatorSettings, start_timeout_s: float = 120.0) -> None:
        self.cfg = cfg
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sbd_stream.sources.emulator_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self.n_sent, self._done = 0, False  # before the child can fail: close() reads them
        self._in.write(json.dumps(cfg.model_dump(mode="json")) + "\n")
        self._in.flush()
        line = _readline(self._out, start_timeout_s)
        if not line:
            self.close()
            raise TimeoutError(f"the emulator process did not start in {start_timeout_s:.0f} s")
        self.endpoint = line.strip()

    def go(self) -> None:
        self._in.write("go\n")
        self._in.flush()

    def done(self) -> bool:
        """True once the series is sent (``n_sent`` then holds its frame count)."""
        if not self._done:
            line = _readline(self._out, 0)
            if line and line.startswith("done"):
                self.n_sent, self._done = int(line.split()[1]), True
        return self._done or self.proc.poll() is not None

    def close(self, timeout: float = 10.0) -> None:
        """End the child: before ``go`` it sends nothing; a running series ends early, with its
        ``series_end`` (the child stops when its stdin closes); terminated if it takes too long."""
        self.done()
        with contextlib.suppress(OSError, ValueError):
            self._in.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5.0)
        if not self._done:
            line = self._out.read() if self.proc.poll() is not None else ""
            for ln in line.splitlines():
                if ln.startswith("done"):
                    self.n_sent, self._done = int(ln.split()[1]), True


if __name__ == "__main__":
    main()
