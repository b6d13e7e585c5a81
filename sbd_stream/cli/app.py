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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup


class _Refused(Exception):
    """A click usage error on its way past typer's own report (a rich box) to ``OneLineUsageErrors.main``.

    Not a ``ClickException``, so typer's handler lets it through; ``error`` is click's exception."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _is_click_error(e: BaseException) -> bool:
    """A ``ClickException`` of whichever click typer uses (0.29 vendors its own as ``typer._click``:
    duck-typed by class name, as typer itself tells ``NoArgsIsHelpError``). ``NoArgsIsHelpError`` is not
    one here: it prints the help, as before."""
    names = {c.__name__ for c in type(e).__mro__}
    return "ClickException" in names and "NoArgsIsHelpError" not in names


def usage_error_line(e: Exception) -> str:
    """click's message on one line, and where the help is: ``Invalid value for '--evidence-frames':
    Input should be less than or equal to 16 (try 'sbd-stream demo --help')`` (after ``error: ``)."""
    told = getattr(e, "format_message", None)
    text = told() if callable(told) else str(e)
    msg = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    ctx = getattr(e, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        msg += f" (try '{ctx.command_path} {max(ctx.command.get_help_option_names(ctx), key=len)}')"
    return msg


class OneLineUsageErrors(TyperGroup):
    """The app's group: a usage error (an option out of its range, a bad choice, a missing argument, an
    unknown option or command) is one line ``error: ...``, its status click's own (2).

    Why: typer drew click's report as a ``Usage:`` line, a hint and a rich box that wrapped a long message
    mid-word across box lines: no ``error:`` line to grep for in a log, box characters in a systemd journal,
    unlike every other refusal of both CLIs (``fail``). Caught here, on the group, so the console scripts,
    ``python -m`` and ``typer.testing.CliRunner`` all print the same line. With ``standalone_mode=False``
    the caller gets click's exception, as before; ``--help``, no arguments (the help, status 2),
    ``typer.Exit``, ``Abort`` and Ctrl-C (130) go by untouched.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except Exception as e:
            if _is_click_error(e):
                raise _Refused(e) from None
            raise

    def invoke(self, ctx: Any) -> Any:
        from sbd_stream.stop_pending import ctrl_c_recorded

        try:
            with ctrl_c_recorded():  # a Ctrl-C swallowed before a command's stop handler: not lost
                return super().invoke(ctx)
        except KeyboardInterrupt:  # a command's load (no stop handler yet): one line, 130 (typer's)
            say_line("interrupted")
            raise
        except Exception as e:  # a subcommand's parse, or a typer.BadParameter raised by a command
            if _is_click_error(e):
                raise _Refused(e) from None
            raise

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        except _Refused as refused:
            if not standalone_mode:  # the caller's to report, with its own cause (not ``_Refused``)
                raise refused.error from refused.error.__cause__
            say_error(usage_error_line(refused.error))
            sys.exit(getattr(refused.error, "exit_code", 2))


app = typer.Typer(
    cls=OneLineUsageErrors,
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
    "metrics.port": "--metrics-port",  # --viewer-port 70000 was "viewer.port: ..." (audit h29)
    "viewer.port": "--viewer-port",
    "ingest.endpoint": "--input",
    "publish.endpoint": "--output",
    "record.directory": "--record-dir",
    "denoise.device": "--device",
    "denoise.devices": "--devices",  # an entry: "--devices (entry 2)"
    "denoise.engine": "--engine",  # a TOML's denoise.engine stays itself (from_flags)
    "denoise.workers": "--workers",
}
"""Settings the command-line flags set, so an error names the flag the user typed."""


def settings_error(e: object, flags: dict[str, str] | None = None, from_flags: set[str] | None = None) -> str:
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
        name = names.get(loc) or names.get(f"detector.{loc}") or _entry_of(loc, names) or loc or "settings"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{name}: {msg}{given}")
    return "; ".join(parts) or str(e)


def _entry_of(loc: str, names: dict[str, str]) -> str | None:
    """``--devices (entry 2)`` for ``denoise.devices.1``: a list setting's item named by its flag."""
    base, _, index = loc.rpartition(".")
    return f"{names[base]} (entry {int(index) + 1})" if index.isdigit() and base in names else None


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` (red on a colour terminal) and end the command with exit status 2.

    The status is the message's fallback: where stderr cannot take the line (``2>/dev/full``, a log on
    a full disk) the write's OSError escaped from here, and the command ended in status 1 (click's
    answer to an uncaught error, its traceback lost with stderr) instead of the documented 2.
    """
    say_error(msg)
    raise typer.Exit(2)


def say_line(msg: str) -> None:
    """``msg`` on stderr; dropped where stderr cannot take it (the exit status says it)."""
    try:
        sys.stderr.write(f"{msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # full, closed, or None (``2>&-``)
        pass


def say_error(msg: str) -> None:
    """``error: msg`` on stderr, red on a colour terminal; dropped where stderr cannot take it (the
    caller's status then says it: ``fail``'s 2, a usage error's own)."""
    try:
        if colour_wanted():
            typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        else:  # not even a reset sequence
            typer.echo(f"error: {msg}", err=True)
    except (OSError, ValueError):  # ValueError: a closed file; the line is lost with stderr
        pass


def colour_wanted() -> bool:
    """False under ``NO_COLOR`` (set, not empty: no-color.org) or ``TERM=dumb``, as rich's help honours them.

    Why: ``typer.secho(fg=RED)`` wrapped the ``error:`` line in ANSI red on any terminal, a dumb one or
    a user's ``NO_COLOR=1`` included (click strips colour only off a terminal)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
"""What asks a running service for a clean stop. SIGHUP too: a closed terminal or a dropped ssh session
sends it, and its default (die at once) left the queues undrained and the recording open-for-write.
A SIGHUP the process was started ignoring (``nohup``) stays ignored."""


def on_signals(stop: threading.Event, on_abort: Callable[[], None] | None = None) -> Callable[[], None]:
    """SIGINT / SIGTERM / SIGHUP ask for a clean stop (drain queues, flush and close files).

    Once a stop has begun, a second signal is logged and ignored (the drain goes on: systemd or an
    impatient operator often signals twice); a third ends the process at once by that signal's default
    action, unfinished (the way out of a long drain, as any signal was before), after ``on_abort`` (what
    must not outlive the process even then: ``demo``'s temporary folder). From the interpreter's
    exit on (``atexit``) the stop signals are ignored: Python restores their defaults while it tears
    down, where a second SIGTERM ~0.3 s after the first turned a clean, complete stop into exit 143.

    A Ctrl-C that came before, during the command's load, and whose raise Python swallowed (a weakref
    callback, "Exception ignored in ..."; recorded by ``OneLineUsageErrors.invoke``) is taken over here:
    the stop begins at once, as for a signal from now on. Before, it was lost and the service ran on
    until the next Ctrl-C. From here to the end no stop signal raises (the record's block leaves these
    handlers in place), so a drain is never cut by a ``KeyboardInterrupt``.

    Returns ``release``: the handlers from before, back unless a stop signal came (a command run
    in-process, as the tests do, leaves its caller's Ctrl-C as it found it).
    """
    import atexit
    import signal

    from sbd_stream.stop_pending import take_pending

    seen: list[int] = []  # the stop signals received since this stop was set up

    def handler(signum: int, _frame: object) -> None:
        seen.append(signum)
        name = signal.Signals(signum).name
        if len(seen) == 1:
            log.info("%s: stopping (draining queues, closing files)", name)
            atexit.register(_ignore_stop_signals)
            stop.set()
        elif len(seen) == 2:
            log.warning("%s: already stopping (draining, closing files); a third one ends it at once", name)
        else:
            log.warning("%s again: ending now, without finishing the drain", name)
            if on_abort is not None:
                try:
                    on_abort()
                except Exception as e:  # ending now matters more
                    log.warning("while ending: %s", e)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            time.sleep(1.0)  # another thread may take the signal: its default action ends the process
            os._exit(128 + signum)  # only if it did not

    numbers = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]  # no SIGHUP: Windows
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        numbers.remove(signal.SIGHUP)  # `nohup sbd-stream serve`: meant to outlive the terminal
    previous = {signum: signal.signal(signum, handler) for signum in numbers}
    if (early := take_pending()) is not None:  # a Ctrl-C swallowed during the load (``ctrl_c_recorded``)
        handler(early, None)  # the stop starts now, by the same path as a signal from here on

    def release() -> None:
        if not seen:
            for signum, before in previous.items():
                signal.signal(signum, before)

    return release


class Stopped(Exception):
    """A stop signal arrived during a short, all-or-nothing command (``stop_signals_unwind``)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """SIGTERM / SIGHUP raise ``Stopped`` in the main thread, Ctrl-C ``KeyboardInterrupt``; each is recorded.

    Why: a one-file command (``export``) writes under a hidden temporary name and removes it in a
    ``finally``; the default action of SIGTERM or SIGHUP ended the process without running it, and the
    ``.NAME.<pid>.partial`` stayed behind. There is no queue to drain, so unwinding at once is the clean
    stop. Recorded (``sbd_stream.stop_pending``): a raise Python swallowed (the signal landed in a
    weakref callback or a ``__del__``, "Exception ignored in ...") is raised again by the loop's next
    ``check_stop``; before, the export ran on to its end and wrote its output after the stop. A signal
    the process was started ignoring (``nohup``, ``cmd &``) stays ignored; the handlers from before are
    back afterwards (commands run in-process, as the tests do).
    """
    import signal

    from sbd_stream.stop_pending import recorded_stops

    def raise_as(signum: int) -> BaseException:
        return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)

    numbers = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
    with recorded_stops(numbers, raise_as):
        yield


def _ignore_stop_signals() -> None:
    """Ignore the stop signals for the rest of the interpreter's exit (``on_signals``): an ignored signal
    stays ignored through the teardown, where a handled one falls back to its default."""
    import signal

    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def main() -> None:  # pragma: no cover - console entry (``sbd-stream``, ``python -m sbd_stream``)
    """The CLI; Ctrl-C before a command took over the signals is one line, exit 130.

    Why: the first second or two go to imports (torch, pydantic) before any handler exists, and a
    Ctrl-C there printed a 7-25 frame KeyboardInterrupt traceback. Inside a command typer turns it
    into exit 130 already, without a traceback.

    The ``exec("pass")``: a Ctrl-C that lands inside the ``exec`` with which ``dataclasses`` builds a
    class during those imports (pydantic's, annotated_types') leaves CPython's "unhandled
    KeyboardInterrupt" mark set, and ``python -m sbd_stream`` then ended by killing itself with SIGINT
    after printing "interrupted" (status -2, not 130: 9 of 40 runs on a loaded 2-core machine; the
    traceback caught inside ``dataclasses._create_fn``). Any successful ``exec`` of a string clears the
    mark (0 of 80 runs after).

    Standard output that cannot be written (``--help | head -1``, ``info > /dev/full``) is
    ``stdout_guard``'s: status 0 for a reader that went away, else one ``error:`` line and 2.
    """
    from sbd_stream.cli.stdout_guard import run_watching_stdout

    try:
        run_watching_stdout(_main)  # a closed pipe: status 0; a full disk: one line, 2 (stdout_guard)
    except KeyboardInterrupt:
        try:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # full, closed, or None (``2>&-``): the status says it
            pass
        raise SystemExit(130) from None
    finally:
        # clears CPython's "unhandled KeyboardInterrupt" mark (docstring), also where the Ctrl-C was
        # handled inside a command (typer's exit 130): one landing in an import's ``exec`` there ended
        # the process by SIGINT (-2) with nothing said (session 34: config imports no torch, so those
        # imports now run inside the command)
        exec("pass")


@contextmanager
def unprinted_errors_keep_their_status() -> Iterator[None]:
    """A usage error click could not print (stderr on a full disk, ``2>/dev/full``) ends with its own
    status (2), not 1.

    Why: click reports a ``ClickException`` (``--bogus``, a missing argument) by writing it to stderr;
    that write's OSError escaped with the exception as its context, and the interpreter's answer to an
    uncaught error, status 1, replaced the documented 2 (``fail`` guards its own line the same way).
    Usage errors now go through ``OneLineUsageErrors`` and ``say_error``, which drops a line stderr cannot
    take; this stays for a report typer still prints itself (a click exception outside the group's reach).
    """
    try:
        yield
    except OSError as e:
        told = e.__context__
        code = getattr(told, "exit_code", None)  # a ClickException (typer may vendor click: duck-typed)
        if told is None or not hasattr(told, "show") or not isinstance(code, int):
            raise
        raise SystemExit(code) from None


def _main() -> None:
    """The CLI; a process that abandoned a recording part ends without interpreter shutdown.

    Why: a part HDF5 failed to write is never closed nor freed (``AcqFile.abandon``), but libhdf5's
    own shutdown at exit still touched it and crashed now and then (status -11 after a clean stop, in
    CI). The command's output is written by then; only the interpreter's teardown is skipped. Only here,
    at the console entry: commands run in-process (tests) never end the process. The same for a thread a
    stop gave up on (``supervisor.left_running``: a recorder inside a write, a worker inside its engine):
    frozen by the teardown, one inside h5py held h5py's lock and ``serve`` hung for good after its
    summary; one inside the engine aborted the process (SIGABRT).

    That import brings in torch and h5py, with Ctrl-C held (``sbd_stream.sigint_hold``: one landing
    inside torch's pybind11 frames aborted the process).
    """
    from sbd_stream.sigint_hold import sigint_held

    with sigint_held():
        from sbd_stream.formats.recording import abandoned_parts

    from sbd_stream.supervisor import left_running

    t0 = time.perf_counter()
    try:
        with unprinted_errors_keep_their_status():
            app()
    except SystemExit as e:
        if abandoned_parts() or left_running():
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            why = [f"{n} recording part(s) abandoned" for n in [abandoned_parts()] if n]
            why += [f"still running after the stop: {'; '.join(left)}" for left in [left_running()] if left]
            log.warning("exiting without interpreter shutdown: %s", "; ".join(why))
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
    log.debug("done in %.1fs", time.perf_counter() - t0)
