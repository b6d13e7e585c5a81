"""``sbd-train``'s console entry: Ctrl-C before a command took over is one line, exit 130.

Why: the entry used to be the typer app itself, so the console script imported ``training.cli`` (torch,
pydantic, all the command modules: ~2 s) before any code of ours ran, and a Ctrl-C there printed a
KeyboardInterrupt traceback. This module imports nothing at its top, so the handler below is in place
before the first heavy import, as ``sbd-stream``'s ``main`` does.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Ctrl-C is held while ``training.cli`` imports torch (``sbd_stream.sigint_hold``: one landing in
    torch's pybind11 frames aborted the process, status -6), then taken as "interrupted", 130.

    Standard output that cannot be written is ``sbd_stream.cli.stdout_guard``'s, as for ``sbd-stream``:
    ``sbd-train --help | head -1`` ends with status 0 (it was 1: a ``set -o pipefail`` script failed),
    a full disk in one ``error:`` line and status 2.

    A status is kept where stderr cannot take its line (``2>/dev/full``, ``2>&-``): a usage error click
    could not print (``--bogus``) ends in 2 (``sbd_stream.cli.app.unprinted_errors_keep_their_status``),
    not the interpreter's 1 for the write's uncaught OSError; "interrupted" in 130."""
    try:
        from sbd_stream.sigint_hold import sigint_held

        with sigint_held():
            from sbd_stream.cli.app import unprinted_errors_keep_their_status
            from sbd_stream.cli.stdout_guard import run_watching_stdout
            from training.cli import app

        def body() -> None:
            with unprinted_errors_keep_their_status():
                app()

        run_watching_stdout(body)
    except KeyboardInterrupt:
        try:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # full, closed, or None (``2>&-``): the status says it
            pass
        raise SystemExit(130) from None
    finally:  # clears CPython's "unhandled KeyboardInterrupt" mark, also after a Ctrl-C a command
        exec("pass")  # handled (``sbd_stream.cli.app.main``)


if __name__ == "__main__":
    main()
