"""A stop whose raise Python swallows is not lost in ``sbd-train``'s long loops (session 35).

A signal handler's raise lands in whatever frame runs when the signal arrives; in a weakref callback
Python prints "Exception ignored in ..." and drops it (``sbd-train simulate`` ran to its end after a
SIGTERM that way). ``training.train.stop.stops_raise`` (around every ``sbd-train`` command) now records
the signal as well, and the long loops look: an evaluation's per-image loop (``evaluate.progress.tracked``),
the GPU recipe between its steps, and a training loop that starts after the stop was swallowed (while its
data were read). Here the signal is raised from inside a real weakref callback in the main thread.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers_signals import signal_inside_a_weakref_callback

from training.cli.train import _checked
from training.evaluate.progress import tracked
from training.train.stop import Interrupted, StopRequest, check_stop, stops_raise

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_stop_signals")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_evaluation_loop_stops_at_its_next_item(
    sig: signal.Signals, swallowed: list[BaseException | None]
) -> None:
    seen = []
    with pytest.raises(Interrupted) as info, stops_raise():
        for i in tracked(range(5), "method", "test images"):
            seen.append(i)
            signal_inside_a_weakref_callback(sig)
            assert [type(e) for e in swallowed] == [Interrupted]  # the case: the handler's raise was dropped
    assert seen == [0]  # not all five images
    assert info.value.signum == sig and info.value.exit_code == 128 + sig
    check_stop()  # outside (and raised once): quiet


def test_a_stop_that_unwound_is_not_raised_again() -> None:
    with pytest.raises(Interrupted), stops_raise():
        signal.raise_signal(signal.SIGTERM)  # an ordinary frame: the handler's raise unwinds from here
    check_stop()
    with stops_raise():  # a fresh command: nothing pending from the last one
        list(tracked(range(3), "method", "test images"))


def test_the_recipe_stops_before_its_next_step(swallowed: list[BaseException | None]) -> None:
    """``gpu-recipe`` logs ``== step ==`` through ``_checked`` before each step."""
    lines: list[str] = []
    log = _checked(lines.append, check_stop)
    with pytest.raises(Interrupted) as info, stops_raise():
        log("== simulate ==")
        signal_inside_a_weakref_callback(signal.SIGTERM)  # during the simulate step, swallowed
        log("== train ==")
    assert lines == ["== simulate =="] and info.value.signum == signal.SIGTERM


def test_a_stop_request_starts_set_by_a_swallowed_stop(swallowed: list[BaseException | None]) -> None:
    with stops_raise():
        signal_inside_a_weakref_callback(signal.SIGINT)
        with StopRequest() as request:
            assert request.signum == signal.SIGINT
    with stops_raise(), StopRequest() as request:  # nothing swallowed: nothing set
        assert request.signum is None


def test_a_training_run_whose_stop_was_swallowed_before_its_loop_stops_after_one_step(
    tmp_path: Path, swallowed: list[BaseException | None]
) -> None:
    """The real loop (tiny preset, 64 px synthetic set): the SIGTERM is swallowed before ``train`` starts
    its steps, as while its data are read; it ends after step 1 with ``last.pt``, not after 40 steps."""
    import torch

    from training.sim.synthetic_data import write_synthetic
    from training.train.loop import train
    from training.train.presets import preset_config

    data = write_synthetic(tmp_path / "a.h5", n_structures=6, per_structure=3, size=64)
    cfg = preset_config("tiny", data=str(data), out_dir=str(tmp_path / "runs"), threads=1, max_steps=40)
    with pytest.raises(Interrupted) as info, stops_raise():
        signal_inside_a_weakref_callback(signal.SIGTERM)
        train(cfg, resume=True)
    assert [type(e) for e in swallowed] == [Interrupted]
    assert info.value.signum == signal.SIGTERM
    assert "stopped by SIGTERM at step 1;" in info.value.line
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["state"]["step"] == 1
    assert not (cfg.run_dir / "summary.json").exists()


def test_a_stop_swallowed_in_an_inner_block_is_raised_after_it(swallowed: list[BaseException | None]) -> None:
    """``train`` / ``export`` / ``gpu-recipe`` add SIGTERM inside the SIGINT block every command runs in."""
    with pytest.raises(Interrupted) as info, stops_raise((signal.SIGINT,)):
        with stops_raise():
            signal_inside_a_weakref_callback(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the inner block's handler is gone
        check_stop()
    assert info.value.signum == signal.SIGTERM


def test_every_sbd_train_command_records_ctrl_c(
    swallowed: list[BaseException | None], capsys: pytest.CaptureFixture[str]
) -> None:
    """A command as ``sbd-train`` registers it (``friendly_errors``): a Ctrl-C swallowed during its work
    ends it at its loop's next item with ``interrupted`` and status 130, not after all of its items."""
    import typer

    from training.cli.errors import friendly_errors

    seen = []

    def command() -> None:
        for i in tracked(range(5), "method", "test images"):
            seen.append(i)
            signal_inside_a_weakref_callback(signal.SIGINT)

    with pytest.raises(typer.Exit) as info:
        friendly_errors(command)()
    assert info.value.exit_code == 130 and seen == [0]
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the command


def test_evaluate_images_stops_at_its_next_draw(
    tmp_path: Path, swallowed: list[BaseException | None]
) -> None:
    """The real ``evaluate-images`` loop (bundled fast engine, one small frame, 4 noise draws): a SIGINT
    swallowed while the first draw's row is logged ends it before the second draw."""
    import numpy as np
    import tifffile

    from sbd_stream.engines.card import FAST_ENGINE
    from sbd_stream.sources.emulator import resample
    from training.evaluate.images import ImageEvalConfig, evaluate_images
    from training.sim.samples import read_quality_frames

    images, _, px = read_quality_frames()
    (tmp_path / "clean").mkdir()
    frame = resample(images[0], px, 0.048)[:96, :96] * 0.45
    tifffile.imwrite(tmp_path / "clean" / "frame.tif", frame.astype(np.float32))
    cfg = ImageEvalConfig(folder=tmp_path / "clean", pixel_size_A=0.048, draws=4, engine=FAST_ENGINE)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        signal_inside_a_weakref_callback(signal.SIGINT)

    with pytest.raises(Interrupted) as info, stops_raise((signal.SIGINT,)):
        evaluate_images(cfg, log=log, warn=lambda _: None)
    assert len(lines) == 1 and info.value.signum == signal.SIGINT
