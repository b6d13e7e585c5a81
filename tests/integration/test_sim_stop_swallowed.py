"""A stop whose raise Python swallows is not lost: ``sbd-train simulate`` still stops at the next task.

The handler raises ``Interrupted`` in whatever frame runs when the signal arrives; in a weakref callback
Python prints "Exception ignored in ..." and drops it. A clean-clone CI under load lost a SIGTERM that
way (``WeakValueDictionary``'s ``remove``) and the simulation ran to its end. Here the signal is raised
from inside a real weakref callback, in the main thread, between tasks of a real Dask loop."""

from __future__ import annotations

import logging
import signal
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from helpers_signals import Thing, signal_inside_a_weakref_callback

from training.cli.sim_stop import simulation_stops
from training.sim.simulate import each_done
from training.train.stop import Interrupted

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_stop_signals")]


@pytest.fixture(autouse=True)
def _dask_logging_restored() -> Any:
    """The handler quiets Dask's loggers for the rest of the process: put them back for later tests."""
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in ("distributed", "tornado")]
    levels = {n: logging.getLogger(n).level for n in names}
    handlers = {h: h.level for h in logging.getLogger("distributed").handlers}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    for h, level in handlers.items():
        h.setLevel(level)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_swallowed_raise_is_raised_again_at_the_check_once(
    sig: signal.Signals, tmp_path: Path, swallowed: list[BaseException | None]
) -> None:
    out = tmp_path / "world.h5"
    checks = 0
    with pytest.raises(Interrupted) as info, simulation_stops(out) as check:
        signal_inside_a_weakref_callback(sig)
        reached = True  # the case: the handler's raise was dropped (it would have unwound past here)
        assert swallowed == []  # and Python's "Exception ignored" traceback is not printed
        for _ in range(3):
            checks += 1
            check()
    assert reached and checks == 1
    assert info.value.signum == sig and info.value.exit_code == 128 + sig
    assert info.value.line.startswith(f"simulation into {out} stopped by {sig.name}: ")
    assert info.value.line.endswith("rerun the same command to resume")
    check()  # outside (and after it raised once), the check is quiet


def test_a_stop_that_unwound_is_not_raised_twice(tmp_path: Path) -> None:
    with pytest.raises(Interrupted), simulation_stops(tmp_path / "w.h5") as check:
        signal.raise_signal(signal.SIGTERM)  # an ordinary frame: the handler's raise unwinds from here
    check()  # the recorded signal was raised already by the handler: nothing more


def test_other_unraisable_exceptions_are_still_reported(
    tmp_path: Path, swallowed: list[BaseException | None]
) -> None:
    thing = Thing()

    def fail(_: object) -> None:
        raise ValueError("a real bug in a callback")

    ref = weakref.ref(thing, fail)
    with simulation_stops(tmp_path / "w.h5"):
        del thing
    assert ref() is None and [type(e) for e in swallowed] == [ValueError]


def test_no_signal_no_stop(tmp_path: Path) -> None:
    with simulation_stops(tmp_path / "w.h5") as check:
        for _ in range(5):
            check()


def test_the_task_loop_stops_promptly_after_a_swallowed_sigterm(
    tmp_path: Path, swallowed: list[BaseException | None]
) -> None:
    """The real loop over Dask futures (threads here): the signal arrives in a weakref callback after the
    first task; the loop raises within its 0.1 s poll instead of waiting for (or running) the rest."""
    from distributed import Client, as_completed

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        futures: Any = as_completed([client.submit(time.sleep, s, pure=False) for s in (0.05, 5, 5)])
        seen = 0
        t0 = time.monotonic()
        with pytest.raises(Interrupted) as info, simulation_stops(tmp_path / "w.h5") as check:
            for _ in each_done(futures, check):
                seen += 1
                signal_inside_a_weakref_callback(signal.SIGTERM)
        waited = time.monotonic() - t0
        for fut in list(futures.futures):
            fut.cancel()
    assert swallowed == []
    assert seen == 1 and info.value.signum == signal.SIGTERM
    assert waited < 3, waited  # not the 5 s tasks: the stop took effect at the next poll


def test_each_done_yields_every_future_once_as_they_finish() -> None:
    from distributed import Client, as_completed

    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        subs = [client.submit(time.sleep, s, pure=False) for s in (0.3, 0.0, 0.1)]
        futures: Any = as_completed(subs[:2])
        got = []
        for fut in each_done(futures, count):
            got.append(fut)
            if len(got) == 1:
                futures.add(subs[2])  # added while iterating, as the simulation's queue does
    assert sorted(f.key for f in got) == sorted(f.key for f in subs) and len(got) == 3
    assert calls >= 4  # before each future and at the end
