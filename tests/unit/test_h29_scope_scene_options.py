"""Scene options of `emulate` and `demo` that were accepted and then not honoured, or not one line.

Found by a client run against docs/emulator.md ("Option checks": every value checked before anything is
sent, a bad one is one line `error: ...`, exit status 2):

- `demo --event foo --event-frame 3`, `demo --focus-rate inf`, `demo --drift-angle nan` ended in a
  pydantic traceback (exit 1) after the engine had loaded; `emulate` said one line.
- `--drift -1` / `--event-frame -1` were a multi-line usage box (typer's own range check), not one line.
- `--event hop` without `--event-frame`, or `--event-frame 5 --frames 3`, sent the whole series without
  the event and without a word.
- `emulate --pool 100000` drew noise frames after the banner towards 237 GB of memory.

Nothing is mocked: the settings are validated as the commands build them, the commands run in-process.
"""

from __future__ import annotations

import pytest
from conftest import free_port
from pydantic import ValidationError
from typer.testing import CliRunner

from sbd_stream.cli.app import app
from sbd_stream.sources.emulator_settings import POOL_MAX_BYTES, EmulatorSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

runner = CliRunner()


def _one_line_error(res, *words: str) -> str:
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and all(w in errors[0] for w in words), errors
    return errors[0]


def _emulate(*args: str):
    ep = f"tcp://127.0.0.1:{free_port()}"
    return runner.invoke(app, ["emulate", "--endpoint", ep, "--wait", "0", "--frames", "3", *args])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--event", "foo", "--event-frame", "1"], ["--event", "'vanish' or 'hop'"]),
        (["--focus-rate", "inf"], ["--focus-rate", "finite"]),
        (["--drift-angle", "nan"], ["--drift-angle", "finite"]),
        (["--drift", "-1"], ["--drift", "greater than or equal to 0"]),
        (["--event", "hop"], ["--event hop", "--event-frame N"]),
        (["--event", "vanish"], ["--event vanish", "--event-frame N"]),
        (["--event-frame", "5"], ["--event-frame", "frames 0-2"]),
    ],
)
def test_demo_refuses_a_bad_scene_option_in_one_line(args: list[str], words: list[str]) -> None:
    """Checked before the engine loads: one line, exit 2 (was a traceback, or the event never shown)."""
    _one_line_error(runner.invoke(app, ["demo", "--frames", "3", "--no-record", *args]), *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--drift", "-1"], ["--drift", "greater than or equal to 0"]),
        (["--event-frame", "-1"], ["--event-frame", "greater than or equal to 0"]),
        (["--event", "hop"], ["--event hop", "--event-frame N"]),
        (["--event-frame", "3"], ["--event-frame", "never sent", "frames 0-2"]),
        (["--pool", "100000"], ["--pool", "236.7 GB", "at most 2.1 GB"]),
    ],
)
def test_emulate_refuses_an_option_it_would_not_honour(args: list[str], words: list[str]) -> None:
    _one_line_error(_emulate(*args), *words)


def test_the_bounds_are_exact() -> None:
    """The last event frame and the largest pool are accepted, and still are when the demo's emulator
    process rebuilds them from every field (``model_dump``: a check on ``event`` alone broke every demo
    once, its default being a value too); one more is not."""
    for cfg in (
        EmulatorSettings(),
        EmulatorSettings(n_frames=200, event_frame=199, event="hop", pool=8),
        EmulatorSettings(shape=(3838, 3710), dtype="uint8", pool=8),
    ):
        assert EmulatorSettings(**cfg.model_dump(mode="json")) == cfg
    EmulatorSettings(n_frames=3, event_frame=2, event="hop")
    with pytest.raises(ValidationError, match="never sent"):
        EmulatorSettings(n_frames=3, event_frame=3)
    size = (1024 + 64) * (1024 + 64) * 2
    EmulatorSettings(pool=POOL_MAX_BYTES // size)
    with pytest.raises(ValidationError, match="pre-drawn frames"):
        EmulatorSettings(pool=POOL_MAX_BYTES // size + 1)
    EmulatorSettings(shape=(3838, 3710), dtype="uint8", pool=8)  # README's K2 example
