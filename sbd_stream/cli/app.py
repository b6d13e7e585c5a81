"""The ``sbd-stream`` typer app and what every command does the same way: logging, errors, signals.

Command modules (``files``, ``live``, ``merge``) register on ``app``; this module imports none of
them, so the package ``__init__`` is the one place that pulls them in and nothing imports back up.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import NoReturn

import typer

app = typer.Typer(
    help=(
        "Real-time simulation-based denoising of counted TEM frames.\n\n"
        "Start with `sbd-stream demo` (no microscope needed), `sbd-stream denoise IN OUT` for files, "
        "`sbd-stream info` to see which engines and devices are usable here."
    ),
    no_args_is_help=True,
    add_completion=False,
)

log = logging.getLogger("sbd_stream")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` in red and end the command with exit status 2."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def on_signals(stop: threading.Event) -> None:
    """SIGINT / SIGTERM ask for a clean stop (drain queues, flush and close files)."""
    import signal

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (draining queues, closing files)", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main() -> None:  # pragma: no cover - console entry
    t0 = time.perf_counter()
    app()
    log.debug("done in %.1fs", time.perf_counter() - t0)
