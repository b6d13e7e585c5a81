"""One line, not a traceback, for what a user gets wrong: ``error: ...`` on stderr and exit status 2.

Why: a missing ``--data`` file, a truncated HDF5, ``--lr -1`` or ``--device tpu`` used to end in a
screen of rich traceback from deep inside h5py, pydantic or torch, with the cause in its last line.
Every command is wrapped in :func:`friendly_errors`: the error types that mean a bad input (files,
values, engines) become one line naming the file or flag; anything else is a bug and keeps its
traceback. ``sbd-train --verbose COMMAND ...`` or ``SBD_TRACEBACK=1`` shows the traceback of the
expected errors too (to report one that should not have happened). A missing module of an optional
extra (abtem, ase, matplotlib, bm3d of ``train``; tensorrt of ``gpu``) is one line naming the extra to
install: ``sbd-train`` ships with the base package, and ``simulate`` / ``scenes`` on a base install
ended in a screen of traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import typer
from pydantic import ValidationError

from sbd_stream.cli.app import fail, settings_error
from sbd_stream.engines.base import EngineUnavailable
from sbd_stream.engines.card import ArtefactError

EXPECTED: tuple[type[BaseException], ...] = (OSError, ValueError, ArtefactError, EngineUnavailable)
"""Errors that mean a bad file, value or engine. ``OSError`` covers missing files and h5py's unreadable
(truncated, not HDF5) ones; ``ValueError`` pydantic's ValidationError, a non-simulated file, an
unknown preset or baseline, an empty split, a refused resume. Other types (a RuntimeError from torch
mid-run, a KeyError, an AssertionError) are bugs: the option values that reach torch are checked first."""

EXTRA_OF_MODULE = {
    "abtem": "train",
    "ase": "train",
    "matplotlib": "train",
    "mpl_toolkits": "train",
    "bm3d": "train",
    "tensorrt": "gpu",
    "pycuda": "gpu",
    "dectris": "dectris",
    "dask": "",
    "distributed": "",
}
"""Top-level module -> the pyproject extra that installs it (``""``: a base dependency, so the install
is broken). tests/unit/test_packaging.py checks these against pyproject's extras."""

FLAG_OF_FIELD = {
    "augment": "--patch",
    "augment.patch": "--patch",
    "extra_data_weights": "--extra-data-weight",
    "match_distance_A": "--match-distance-A",
    "column_radius_A": "--column-radius-A",
    "baselines": "--baseline",
}
"""Config fields whose flag is not ``--`` + the field name with dashes."""

TRACEBACK = {"on": False}
"""Set by ``sbd-train --verbose`` (training.cli.app); ``SBD_TRACEBACK=1`` does the same."""

F = TypeVar("F", bound=Callable[..., Any])


def show_tracebacks() -> bool:
    return TRACEBACK["on"] or os.environ.get("SBD_TRACEBACK", "") not in ("", "0")


def flags_for(e: ValidationError) -> dict[str, str]:
    """Each config field in ``e`` -> the option that sets it (``max_steps`` -> ``--max-steps``)."""
    out = {}
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        out[loc] = FLAG_OF_FIELD.get(loc) or "--" + loc.replace("_", "-")
    return out


def one_line(e: BaseException) -> str:
    """The message of an expected error, on one line, naming the file where the error knows it."""
    if isinstance(e, ValidationError):
        return settings_error(e, flags_for(e))
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, BrokenPipeError):  # `| head`: the reader left; nothing about HDF5 files
        return "standard output closed early (broken pipe)"
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError):
        # h5py: "[Errno 2] Unable to synchronously open file (unable to open file: name = 'x.h5', ...)"
        name = re.search(r"name = '([^']+)'", text)
        if isinstance(e, FileNotFoundError):
            # a missing file is never a damaged one: our own "x: no training set (run the simulate
            # step)" read "... (a damaged or truncated HDF5 file?)"
            return f"{name.group(1)}: no such file" if name else text
        return f"{text} (a damaged or truncated HDF5 file?)"
    return text


def missing_extra(e: ImportError) -> str | None:
    """One line for an ImportError of a module some extra installs (None for any other module: a missing
    or broken module of this project is a bug and keeps its traceback)."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = EXTRA_OF_MODULE[top]
    why = " ".join(str(e).split())  # a shared library's error can span lines
    what = "is not installed" if isinstance(e, ModuleNotFoundError) else f"cannot be imported ({why})"
    if not extra:
        return f"module '{top}' {what}, though sbd-stream requires it; reinstall: pip install 'sbd-stream'"
    return f"module '{top}' {what}; this command needs the '{extra}' extra: pip install 'sbd-stream[{extra}]'"


def need_modules(*modules: str) -> None:
    """Raise ``ModuleNotFoundError`` (one line by :func:`friendly_errors`) unless ``modules`` can be found.

    Why before the work: ``simulate`` imports abTEM and ASE inside Dask tasks, where a missing module
    failed every task with a worker traceback each, and the command still exited 1 without naming the
    extra; ``scenes`` left its ``.tmp.h5`` behind. Looks the modules up only (no import: abTEM takes
    seconds), so a module that is there but broken still fails in the task, with its own message."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a finder that refuses it, a parent package that fails to import
            found = False
        if not found:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)


def interrupted(e: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C or SIGTERM as one line, ``interrupted: <what stopped, how to go on>``, and exit status 128
    + the signal (130, 143). Why here: typer turns a ``KeyboardInterrupt`` that leaves a command into a
    silent exit 130, so the handler of ``training.console`` never saw one (audit 24). A command that
    can say more raises ``training.train.stop.Interrupted`` with its line.

    The status is kept where stderr cannot take the line (``2>/dev/full``: the write's OSError ended the
    command in status 1; ``2>&-``: no ``sys.stderr`` at all), as :func:`sbd_stream.cli.app.fail` keeps 2."""
    line = getattr(e, "line", "")
    write_stderr_line(f"interrupted: {line}" if line else "interrupted")
    raise typer.Exit(getattr(e, "exit_code", 130))


def write_stderr_line(line: str) -> None:
    """Write ``line`` to stderr, or drop it where stderr cannot take it (full, closed or absent): the
    caller's exit status then says what happened, not the interpreter's 1 for an uncaught OSError."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # ValueError: a closed file; AttributeError: None (2>&-)
        pass


def friendly_errors(command: F) -> F:
    """``command`` with the EXPECTED errors, and a missing optional module, turned into ``error: ...``
    and exit status 2; an interruption into one line ``interrupted: ...`` (:func:`interrupted`).

    Runs it inside ``training.train.stop.stops_raise`` for SIGINT: Ctrl-C raises ``Interrupted`` (as
    Python's own ``KeyboardInterrupt``) and is recorded, so a raise Python swallowed (in a weakref
    callback, a ``__del__``) is raised again at the next ``check_stop`` of a long loop (an evaluation's
    images, the recipe's steps) or starts a training loop stopped, instead of the command running on for
    minutes to hours. SIGTERM keeps its default (the process ends at once: nothing to lose) except where a
    command makes it raise too (``train``, ``export``, ``gpu-recipe``, ``simulate``)."""
    import signal

    from training.train.stop import stops_raise

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with stops_raise((signal.SIGINT,)):
                return command(*args, **kwargs)
        except KeyboardInterrupt as e:
            interrupted(e)
        except EXPECTED as e:
            if show_tracebacks():
                raise
            fail(one_line(e))
        except ImportError as e:
            line = missing_extra(e)
            if line is None or show_tracebacks():
                raise
            fail(line)

    return cast(F, run)
