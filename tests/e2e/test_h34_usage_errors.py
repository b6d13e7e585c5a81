"""A usage error of either CLI is one line ``error: ...``, exit status 2, as every other refusal.

Found (session 34): click's own usage errors (an option out of its range, a word where a number belongs,
a missing argument, an unknown option or command, a ``typer.BadParameter`` raised by a command such as
``--no-likelihood --evidence-frames 2``) were typer's report: a ``Usage:`` line, a ``Try ...`` line and a
rich box that wrapped a long message mid-word across box lines. No ``error:`` line to grep for in a log,
box characters in a systemd journal. Now ``sbd_stream.cli.app.OneLineUsageErrors`` (the group of both
apps) prints click's message unwrapped on one line, with where the help is:
``error: No such option: --nope (try 'sbd-stream demo --help')``.

Each case runs the real console script (``sbd-stream`` / ``sbd-train`` beside the interpreter, else
``python -m``) with stderr a pipe (not a terminal) and a colour ``TERM``: no ANSI codes, no box, no
traceback, nothing on stdout; and the same line in-process (``typer.testing.CliRunner``), as the tests
run the apps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENTRY = {  # the console script; ``python -m`` where it is not installed beside the interpreter
    prog: [str(BIN / prog)] if (BIN / prog).is_file() else [sys.executable, "-m", module]
    for prog, module in (("sbd-stream", "sbd_stream"), ("sbd-train", "training.console"))
}
LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # a log record: ``demo`` logs first
BOX = set("╭╮╰╯│─")

# (program, arguments, how click's message starts, the command whose help the line points to: "" the
# program's; None where click names no command: a missing option value is found before the command is)
CASES = [
    ("sbd-stream", ["demo", "--evidence-frames", "17"], "Invalid value for '--evidence-frames': ", "demo"),
    ("sbd-stream", ["demo", "--rate", "x"], "Invalid value for '--rate': ", "demo"),
    ("sbd-stream", ["demo", "--frames", "0"], "Invalid value for '--frames': ", "demo"),
    ("sbd-stream", ["denoise"], "Missing argument 'input'.", "denoise"),
    ("sbd-stream", ["demo", "--nope"], "No such option: --nope", "demo"),
    ("sbd-stream", ["--nope"], "No such option: --nope", ""),
    ("sbd-stream", ["denoize"], "No such command 'denoize'.", ""),
    ("sbd-stream", ["export", "a.h5", "--to"], "Option '--to' requires an argument.", None),
    ("sbd-stream", ["demo", "--frames", "4", "--no-likelihood", "--evidence-frames", "2"],
     "Invalid value: --evidence-frames scores likelihood maps: drop --no-likelihood", "demo"),
    ("sbd-train", ["train", "--lr", "x"], "Invalid value for '--lr': ", "train"),
    ("sbd-train", ["scenes", "--models", "1-3"], "Invalid value for '--models': ", "scenes"),
    ("sbd-train", ["evaluate-images"], "Missing argument 'folder'.", "evaluate-images"),
    ("sbd-train", ["train", "--nope"], "No such option: --nope", "train"),
    ("sbd-train", ["--bogus"], "No such option: --bogus", ""),
    ("sbd-train", ["simulat"], "No such command 'simulat'.", ""),
    ("sbd-train", ["fov-study-detector", "--world", "zz"], "Invalid value for --world: choose from ",
     "fov-study-detector"),
]  # fmt: skip


def _env() -> dict[str, str]:
    """A colour terminal's settings: only stderr not being a terminal keeps the line plain."""
    return {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color"}


def _check(prog: str, stderr: str, start: str, command: str | None) -> str:
    """The one error line of ``stderr`` (log records aside), checked; returns it."""
    assert "Traceback" not in stderr and "Usage:" not in stderr and "\x1b" not in stderr, stderr
    assert not BOX & set(stderr), stderr
    lines = [ln for ln in stderr.splitlines() if not LOG.match(ln)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {start}"), lines[0]
    if command is None:
        assert lines[0] == f"error: {start}", lines[0]
    else:
        assert lines[0].endswith(f" (try '{' '.join(w for w in (prog, command) if w)} --help')"), lines[0]
    return lines[0]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("prog", "args", "start", "command"), CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES]
)
def test_a_usage_error_is_one_error_line_and_status_2(
    prog: str, args: list[str], start: str, command: str | None
) -> None:
    res = subprocess.run(
        [*ENTRY[prog], *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert res.returncode == 2 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    line = _check(prog, res.stderr, start, command)

    from typer.testing import CliRunner

    if prog == "sbd-stream":
        from sbd_stream.cli import app
    else:
        from training.cli import app
    inproc = CliRunner().invoke(app, args, prog_name=prog)
    assert inproc.exit_code == 2, inproc.output
    assert [ln for ln in inproc.output.splitlines() if not LOG.match(ln)] == [line], inproc.output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("prog", sorted(ENTRY))
def test_help_and_no_arguments_keep_the_rich_help(prog: str) -> None:
    """Not usage errors: ``--help`` is the rich help, status 0; no arguments the same help, status 2."""
    for args, status in ((["--help"], 0), ([], 2)):
        res = subprocess.run([*ENTRY[prog], *args], capture_output=True, text=True, env=_env(), timeout=300)
        assert res.returncode == status, (args, res.returncode, res.stderr)
        assert "Usage:" in res.stdout and "╭─ Commands" in res.stdout, res.stdout
        assert "error:" not in res.stdout + res.stderr, res.stderr


def test_a_caller_that_reports_errors_itself_still_gets_clicks_exception(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``standalone_mode=False`` (a program embedding the app): click's exception, no line, no exit."""
    import typer

    from sbd_stream.cli import app

    with pytest.raises(Exception) as e:
        typer.main.get_command(app).main(["demo", "--nope"], prog_name="sbd-stream", standalone_mode=False)
    assert type(e.value).__name__ == "NoSuchOption" and "--nope" in str(e.value)
    assert capsys.readouterr() == ("", "")
