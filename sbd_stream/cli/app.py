"""The ``sbd-stream`` typer app and what every command does the same way: logging, errors, signals.

Command modules (``files``, ``live``, ``merge``) register on ``app``; this module imports none of
them, so the package ``__init__`` is the one place that pulls them in and nothing imports back up.
"""

from __future__ import annotations

import logging
import os
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
    if not verbose:  # a local Dask cluster's scheduler narrates every worker and client at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)


FLAG_OF_SETTING = {
    "detector.pixel_size_A": "--pixel-size",
    "detector.dose_e_per_A2": "--dose",
    "detector.counts_per_px": "--counts-per-px",
    "denoise.orientations": "--orientations",
    "denoise.batch_frames": "--batch",
    "denoise.tile": "--tile",
    "denoise.margin": "--margin",
    "denoise.threads_per_worker": "--threads-per-worker",
}
"""Settings the command-line flags set, so an error names the flag the user typed."""


def settings_error(
    e: Exception, flags: dict[str, str] | None = None, from_flags: set[str] | None = None
) -> str:
    """A pydantic ValidationError as one line per problem: the flag (or setting), why, the value given.

    ``flags`` maps a command's own settings (``draws``) to its flags (``--draws``), beside the service's.
    ``from_flags``: the settings the command line gave (dotted, ``denoise.batch_frames``); any other is
    named as the setting, since it came from the TOML file or an ``SBD_`` variable (a TOML
    ``batch_frames = 0`` was reported as "--batch", a flag the user never typed).

    Pydantic's own text spreads one problem over three lines and ends in a documentation URL; a user
    who typed ``--pixel-size 0`` wants to read "--pixel-size: Input should be greater than 0 (got 0.0)".
    """
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    names = {**FLAG_OF_SETTING, **(flags or {})}
    if from_flags is not None:
        names = {k: v for k, v in names.items() if k in from_flags}
    parts = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        for prefix in ("ServiceSettings.", "DetectorSettings."):
            loc = loc.removeprefix(prefix)
        name = names.get(loc) or names.get(f"detector.{loc}") or loc or "settings"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{name}: {msg}{given}")
    return "; ".join(parts) or str(e)


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


def main() -> None:  # pragma: no cover - console entry (``sbd-stream``, ``python -m sbd_stream``)
    """The CLI; a process that abandoned a recording part ends without interpreter shutdown.

    Why: a part HDF5 failed to write is never closed nor freed (``AcqFile.abandon``), but libhdf5's
    own shutdown at exit still touched it and crashed now and then (status -11 after a clean stop, in
    CI). The command's output is written by then; only the interpreter's teardown is skipped. Only here,
    at the console entry: commands run in-process (tests) never end the process.
    """
    from sbd_stream.formats.recording import abandoned_parts

    t0 = time.perf_counter()
    try:
        app()
    except SystemExit as e:
        if abandoned_parts():
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            log.warning(
                "exiting without interpreter shutdown: %d recording part(s) abandoned", abandoned_parts()
            )
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
    log.debug("done in %.1fs", time.perf_counter() - t0)
