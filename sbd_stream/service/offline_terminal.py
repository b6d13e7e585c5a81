"""What an offline job writes to the terminal (its progress bar, a last line), and why that can never fail it.

Why: ``denoise --scheduler none IN OUT 2>/dev/full`` (stderr a log file on a full disk) denoised every
frame, then the progress bar's last write raised ENOSPC inside the output's own error handling, which
took it for the *output's* disk being full and deleted the finished file. The terminal is a
courtesy: a write to it that fails is dropped, and nothing more is tried on it (a stream that could
not take one line will not take the next), so the output and the exit status are what the job did.
Only the output's own writes may fail the job (``offline.py``, ``offline_partial.py``). Log records
are already safe: ``logging`` drops a record its handler cannot write.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Terminal", "progress", "say"]


class Terminal:
    """A text stream (stderr by default, looked up when used) whose write errors are dropped.

    After the first failed write or flush it is ``broken`` and writes nothing more.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.broken = False

    @property
    def stream(self) -> TextIO | None:
        """The stream itself: on a terminal rich's live display puts a proxy writing through the bar's
        console (this stream) in ``sys.stderr``, and writing to it would come back here."""
        s = self._stream if self._stream is not None else sys.stderr
        return getattr(s, "rich_proxied_file", s)

    def write(self, text: str) -> int:
        s = self.stream
        if self.broken or s is None:  # None: started with stderr closed (``2>&-``)
            return len(text)
        try:
            s.write(text)
        except (OSError, ValueError):  # ValueError: a closed file
            self.broken = True
        return len(text)

    def flush(self) -> None:
        s = self.stream
        if self.broken or s is None:
            return
        try:
            s.flush()
        except (OSError, ValueError):
            self.broken = True

    def isatty(self) -> bool:
        s = self.stream
        try:
            return bool(s is not None and not self.broken and s.isatty())
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        s = self.stream
        if s is None:
            raise OSError("stderr is closed")
        return s.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def say(line: str, terminal: Terminal | None = None) -> None:
    """Print ``line`` on stderr if it can be printed; a terminal that cannot take it is left alone."""
    t = terminal or Terminal()
    t.write(line + "\n")
    t.flush()


@contextmanager
def progress(total: int, done: int = 0, show: bool = True) -> Iterator[tuple[Any, Any] | None]:
    """An offline job's progress bar on stderr (rich), or None when not wanted.

    On stderr: stdout carries the JSON summary that scripts parse, and rich prints a bar's last state
    when it stops even without a terminal (a bar on stdout broke ``json.load``). Stopped on the way out
    whatever happens, so a failed job leaves no live display behind; its writes go through
    ``Terminal``, so a stderr that cannot be written never fails the job.
    """
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    p = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(file=Terminal()),  # type: ignore[arg-type]  # a text stream in all it uses
    )  # fmt: skip
    p.start()
    try:
        yield p, p.add_task("denoising", total=total, completed=done)
    finally:
        p.stop()
