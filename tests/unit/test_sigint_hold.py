"""``sigint_held``: a Ctrl-C during the block is taken after it, once; nothing else is touched.

The process-level proof (a Ctrl-C at many points of torch's import ends ``sbd-train`` with "interrupted"
and 130, never SIGABRT) is ``tests/e2e/test_cli_stop_signals.py``; here the rules, in-process."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from sbd_stream.sigint_hold import sigint_held


@pytest.fixture(autouse=True)
def _python_ctrl_c():
    """Python's own Ctrl-C handler for each test (a suite started as ``cmd &`` inherits SIGINT ignored),
    and whatever was there before afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_inside_is_raised_once_after_the_block() -> None:
    ran_on = []
    with pytest.raises(KeyboardInterrupt), sigint_held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecode after the signal: Python's handler would have raised here
            ran_on.append(1)
    assert len(ran_on) == 1000
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_ctrl_c_no_interrupt_and_the_handler_back() -> None:
    with sigint_held():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup / `cmd &` in a script
    with sigint_held():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_callers_own_handler_is_left_alone() -> None:
    seen: list[int] = []

    def mine(signum: int, _frame: object) -> None:
        seen.append(signum)

    signal.signal(signal.SIGINT, mine)
    with sigint_held():
        assert signal.getsignal(signal.SIGINT) is mine
        os.kill(os.getpid(), signal.SIGINT)
    assert seen == [signal.SIGINT]


def test_an_error_in_the_block_goes_on_as_it_is() -> None:
    with pytest.raises(ImportError, match="no such"), sigint_held():
        os.kill(os.getpid(), signal.SIGINT)
        raise ImportError("no such module")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_it_changes_nothing() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with sigint_held():
                assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []
