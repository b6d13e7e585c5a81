"""A stop recorded before a command's flag-polling stop handler is taken over by it (session 36).

``sbd_stream.stop_pending``: the CLI's Ctrl-C block (``ctrl_c_recorded``) records a raise Python
swallowed during a command's load; ``cli.app.on_signals`` takes it over when it installs (the stop
event set at once) and keeps its handlers after the block ends (no raise re-armed during the drain).
In-process, on the real signal machinery (``helpers_signals``); the processes are
``tests/e2e/test_h36_sig_startup.py``.
"""

from __future__ import annotations

import signal
import threading

import pytest
from helpers_signals import signal_inside_a_weakref_callback

from sbd_stream.cli.app import Stopped, on_signals
from sbd_stream.stop_pending import (
    check_stop,
    ctrl_c_recorded,
    pending_signal,
    recorded_stops,
    take_pending,
)


def test_on_signals_takes_over_a_ctrl_c_swallowed_before_it(
    swallowed: list, default_stop_signals: None
) -> None:
    stop = threading.Event()
    with ctrl_c_recorded():
        signal_inside_a_weakref_callback(signal.SIGINT)  # the engine's load: Python drops the raise
        assert isinstance(swallowed[0], KeyboardInterrupt) and pending_signal() == signal.SIGINT
        release = on_signals(stop)
        assert stop.is_set()  # before: never; the service ran on until the next Ctrl-C
        check_stop()  # handed over: not raised again anywhere
        assert pending_signal() is None
        release()  # a stop came: its handlers stay (a second Ctrl-C during the drain is only logged)
        handler = signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is handler  # the block did not re-arm Python's raise
    assert handler is not signal.default_int_handler
    signal.raise_signal(signal.SIGINT)  # the drain's last moments: a second Ctrl-C raises nothing


def test_without_a_stop_on_signals_hands_back_and_the_block_restores_pythons_own(
    default_stop_signals: None,
) -> None:
    stop = threading.Event()
    with ctrl_c_recorded():
        release = on_signals(stop)
        assert not stop.is_set()
        release()
        with pytest.raises(KeyboardInterrupt):  # back to the block's raise, still recorded
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_leaves_a_handler_that_took_over_in_place(default_stop_signals: None) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    with recorded_stops((signal.SIGTERM,), Stopped):
        signal.signal(signal.SIGTERM, mine)
    assert signal.getsignal(signal.SIGTERM) is mine  # before: SIG_DFL again, under a running drain


def test_ctrl_c_recorded_leaves_an_ignored_ctrl_c_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, `cmd &` (conftest puts it back)
    with ctrl_c_recorded():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_take_pending_is_none_without_a_stop(default_stop_signals: None) -> None:
    with ctrl_c_recorded():
        assert take_pending() is None
    assert take_pending() is None


def test_a_nested_blocks_signal_is_raised_again_as_its_own(
    swallowed: list, default_stop_signals: None
) -> None:
    """``export``'s SIGTERM block inside the CLI's Ctrl-C block: a swallowed SIGTERM is raised again as
    ``Stopped`` (its own, "SIGTERM: export stopped"), not as the outer block's ``KeyboardInterrupt``."""
    with ctrl_c_recorded(), recorded_stops((signal.SIGINT, signal.SIGTERM), lambda s: Stopped(s)):
        signal_inside_a_weakref_callback(signal.SIGTERM)
        with pytest.raises(Stopped):
            check_stop()


def test_the_offline_jobs_stop_flag_takes_over_a_ctrl_c_swallowed_before_it(
    swallowed: list, default_stop_signals: None
) -> None:
    """``denoise`` / ``replay --offline`` poll ``StopFlag``; a Ctrl-C swallowed while the job loaded its
    engine (before the flag's handlers) was lost there, and the job ran to its end."""
    from sbd_stream.service.offline_results import StopFlag

    with ctrl_c_recorded():
        signal_inside_a_weakref_callback(signal.SIGINT)
        assert isinstance(swallowed[0], KeyboardInterrupt)
        with StopFlag().installed() as flag:
            assert flag.signum == signal.SIGINT  # the job stops at its first check, as for a Ctrl-C now
            check_stop()  # handed over: not raised again
        assert pending_signal() is None
